"""Scenes, view phrases and the caption template of the shapes world."""

import pytest

from gendistill.domains.shapes import (
    COLOURS,
    SHAPES,
    VIEW_PHRASES,
    VOCABULARY,
    Camera,
    Scene,
    all_scenes,
    caption,
    colour_index,
    parse_caption,
    parse_view,
    scene_from_indices,
    shape_index,
    view_phrase,
)
from gendistill.errors import UserError


def test_all_scenes_are_the_40_combinations_and_indices_round_trip():
    scenes = all_scenes()
    assert len(scenes) == len(set(scenes)) == 40 == len(SHAPES) * len(COLOURS)
    for sc in scenes:
        assert scene_from_indices(shape_index(sc.shape), colour_index(sc.colour)) == sc


def test_colours_are_distinct_rgb_in_unit_range():
    values = list(COLOURS.values())
    assert len(values) == 8
    for i, a in enumerate(values):
        assert all(0.0 <= x <= 1.0 for x in a)
        for b in values[i + 1:]:
            assert max(abs(x - y) for x, y in zip(a, b)) > 0.25


@pytest.mark.parametrize("shape, colour", [("pyramid", "red"), ("cube", "teal"), ("Cube", "red")])
def test_scene_rejects_unknown_names(shape, colour):
    with pytest.raises(UserError):
        Scene(shape, colour)


@pytest.mark.parametrize("azimuth, elevation, phrase", [
    (0, 0, "front view"), (30, 20, "front view"), (330, -10, "front view"), (-40, 10, "front view"),
    (45, 0, "side view"), (90, 10, "side view"), (270, 30, "side view"), (134, 0, "side view"),
    (180, 0, "back view"), (150, 40, "back view"), (220, -5, "back view"),
    (0, 55, "overhead view"), (180, 60, "overhead view"), (90, 50.5, "overhead view"), (90, 50, "side view"),
])
def test_view_phrase_follows_the_camera(azimuth, elevation, phrase):
    assert view_phrase(Camera(azimuth, elevation)) == phrase


def test_caption_text():
    assert caption(Scene("cube", "red")) == "a red cube"
    assert caption(Scene("torus", "orange"), Camera(180, 0)) == "an orange torus, back view"
    assert caption(Scene("cone", "blue"), Camera(10, 20)) == "a blue cone, front view"


def test_parse_caption_round_trips_every_caption():
    cameras = [Camera(0, 0), Camera(90, 0), Camera(180, 0), Camera(0, 60)]
    for sc in all_scenes():
        assert parse_caption(caption(sc)) == sc
        assert parse_view(caption(sc)) is None
        for cam in cameras:
            text = caption(sc, cam)
            assert parse_caption(text) == sc
            assert parse_view(text) == view_phrase(cam)


def test_parse_caption_is_lenient_about_case_spacing_and_article():
    assert parse_caption("  A  Red CUBE ,front view ") == Scene("cube", "red")
    assert parse_caption("an orange cone") == Scene("cone", "orange")
    assert parse_caption("a orange cone") == Scene("cone", "orange")
    assert parse_caption("green sphere") == Scene("sphere", "green")


@pytest.mark.parametrize("text", [
    "", "a red", "a teal cube", "a red pyramid", "a red cube, top view", "a red cube front view",
    "a red cube, front", "two red cubes", "a red cube, front view, side view",
])
def test_bad_captions_raise_one_line_user_error(text):
    with pytest.raises(UserError) as info:
        parse_caption(text)
    message = str(info.value)
    assert "\n" not in message
    assert all(name in message for name in (*SHAPES, *COLOURS))


def test_vocabulary_covers_every_caption():
    words = set()
    for sc in all_scenes():
        for cam in (None, Camera(0, 0), Camera(90, 0), Camera(180, 0), Camera(0, 60)):
            words.update(caption(sc, cam).replace(",", " , ").split())
    assert words <= set(VOCABULARY)
    assert {w for p in VIEW_PHRASES for w in p.split()} <= set(VOCABULARY)
    assert len(VOCABULARY) == len(set(VOCABULARY))
