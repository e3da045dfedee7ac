"""The one caption template of the shapes world: "a red cube", optionally ", front view".

View phrases are the render layer's (``gendistill.render.view_prompts``: DreamFusion's view-dependent
prompting with threestudio's thresholds, the overhead one lowered to fit this world's -10..60 deg
elevations). :class:`ShapesViewPrompter` is that layer's ``ViewPrompter`` for this world's captions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gendistill.domains.shapes.scene import COLOURS, SHAPES, Scene
from gendistill.errors import UserError
from gendistill.render.cameras import Camera
from gendistill.render.view_prompts import (  # noqa: F401 - re-exported: the shapes world's names
    BACK_HALF_ANGLE_DEG,
    FRONT_HALF_ANGLE_DEG,
    OVERHEAD_ELEVATION_DEG,
    VIEW_PHRASES,
    view_phrase,
)

VOCABULARY: tuple[str, ...] = ("a", "an", *COLOURS, *SHAPES, ",", "front", "side", "back", "overhead", "view")
"""Every word (and punctuation token) that can appear in a caption, for building a tokenizer."""

_CAPTION_RE = re.compile(
    r"^(?:an? )?(?P<colour>[a-z]+) (?P<shape>[a-z]+)(?: ?, ?(?P<view>[a-z]+) view)?$"
)


def caption(scene: Scene, camera: Camera | None = None) -> str:
    """"a red cube" (or "an orange cube"); with a camera, "a red cube, front view"."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    text = f"{article} {scene.colour} {scene.shape}"
    return text if camera is None else f"{text}, {view_phrase(camera)}"


@dataclass(frozen=True)
class ShapesViewPrompter:
    """The shapes world's ``ViewPrompter``: rebuilds the caption with the view's phrase, so "A Red Cube" or
    "a red cube, back view" seen from the side becomes "a red cube, side view"."""

    def prompt(self, base: str, camera: Camera | None) -> str:
        """``caption(parse_caption(base), camera)``; a UserError when ``base`` is not a shapes caption."""
        return caption(parse_caption(base), camera)


def parse_caption(text: str) -> Scene:
    """The scene a caption names; accepts the view phrase or not, any case and spacing, "a" or "an".

    Raises a UserError saying what a caption looks like and which shapes and colours exist.
    """
    match = _match(text)
    return Scene(match["shape"], match["colour"])


def parse_view(text: str) -> str | None:
    """The view phrase of a caption ("front view", ...), or None when it has none; validates like
    parse_caption."""
    view = _match(text)["view"]
    return None if view is None else f"{view} view"


def _match(text: str) -> re.Match:
    match = _CAPTION_RE.match(" ".join(text.strip().lower().split()))
    if match is None or match["shape"] not in SHAPES or match["colour"] not in COLOURS or (
            match["view"] is not None and f"{match['view']} view" not in VIEW_PHRASES):
        raise UserError(
            f"cannot read caption {text!r}: expected 'a <colour> <shape>[, <front|side|back|overhead> view]' "
            f"with colour in {{{', '.join(COLOURS)}}} and shape in {{{', '.join(SHAPES)}}}")
    return match
