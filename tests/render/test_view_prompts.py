"""View-dependent prompting: the generic suffix prompter and the shapes world's caption prompter."""

import itertools

import pytest

from gendistill.domains.shapes import ShapesViewPrompter, all_scenes, caption, parse_caption
from gendistill.errors import UserError
from gendistill.render.cameras import Camera
from gendistill.render.view_prompts import SuffixViewPrompter, ViewPrompter, view_phrase

CAMERAS = [None, Camera(0.0, 10.0), Camera(90.0, 10.0), Camera(180.0, -5.0), Camera(270.0, 40.0),
           Camera(30.0, 70.0)]


def _view_prompt_before(prompt, camera):
    """text_to_3d.run.view_prompt as it was before the prompters: a caption is rebuilt, else the suffix."""
    try:
        scene = parse_caption(prompt)
    except UserError:
        return prompt.strip() if camera is None else f"{prompt.strip()}, {view_phrase(camera)}"
    return caption(scene, camera)


def test_both_prompters_are_view_prompters():
    assert isinstance(SuffixViewPrompter(), ViewPrompter) and isinstance(ShapesViewPrompter(), ViewPrompter)


def test_the_suffix_prompter_appends_the_view_phrase_to_any_prompt():
    prompter = SuffixViewPrompter()
    assert prompter.prompt(" a chair ", Camera(0.0, 10.0)) == "a chair, front view"
    assert prompter.prompt("a castle on a hill", Camera(170.0, 10.0)) == "a castle on a hill, back view"
    assert prompter.prompt("a castle", Camera(0.0, 70.0)) == "a castle, overhead view"
    assert prompter.prompt("  a chair", None) == "a chair"


def test_the_shapes_prompter_equals_the_former_view_prompt_on_every_caption():
    prompter = ShapesViewPrompter()
    texts = []
    for scene in all_scenes():
        base = caption(scene)
        texts += [base, base.upper(), f"  {base}  ", f"{base}, back view", f"{base} ,overhead view"]
    for text, camera in itertools.product(texts, CAMERAS):
        assert prompter.prompt(text, camera) == _view_prompt_before(text, camera), (text, camera)
    assert prompter.prompt("an orange cube, back view", Camera(90.0, 10.0)) == "an orange cube, side view"
    assert prompter.prompt("A  Red Sphere", None) == "a red sphere"


def test_the_shapes_prompter_refuses_what_is_not_a_caption():
    with pytest.raises(UserError, match="cannot read caption 'a chair'"):
        ShapesViewPrompter().prompt("a chair", Camera(0.0, 10.0))
