"""The one caption template of the shapes world: "a red cube", optionally ", front view".

View phrases follow DreamFusion's view-dependent prompting (threestudio's thresholds, with the overhead
threshold lowered to fit this world's -10..60 deg elevations):

- "overhead view" when the elevation is above OVERHEAD_ELEVATION_DEG;
- otherwise by azimuth, wrapped to (-180, 180]: "front view" within FRONT_HALF_ANGLE_DEG of 0 (the +x
  axis), "back view" within BACK_HALF_ANGLE_DEG of 180, "side view" in between.
"""

from __future__ import annotations

import re

from gendistill.domains.shapes.camera import Camera
from gendistill.domains.shapes.scene import COLOURS, SHAPES, Scene
from gendistill.errors import UserError

OVERHEAD_ELEVATION_DEG = 50.0
"""Cameras strictly above this elevation get "overhead view"."""
FRONT_HALF_ANGLE_DEG = 45.0
"""Cameras with |azimuth| < this (after wrapping) get "front view"."""
BACK_HALF_ANGLE_DEG = 45.0
"""Cameras with |azimuth - 180| < this get "back view"."""
VIEW_PHRASES: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")
"""Every view phrase, in class-index order."""

VOCABULARY: tuple[str, ...] = ("a", "an", *COLOURS, *SHAPES, ",", "front", "side", "back", "overhead", "view")
"""Every word (and punctuation token) that can appear in a caption, for building a tokenizer."""

_CAPTION_RE = re.compile(
    r"^(?:an? )?(?P<colour>[a-z]+) (?P<shape>[a-z]+)(?: ?, ?(?P<view>[a-z]+) view)?$"
)


def view_phrase(camera: Camera) -> str:
    """"front view", "side view", "back view" or "overhead view" for the camera's angles."""
    if camera.elevation_deg > OVERHEAD_ELEVATION_DEG:
        return "overhead view"
    azimuth = (camera.azimuth_deg + 180.0) % 360.0 - 180.0  # in [-180, 180)
    if abs(azimuth) < FRONT_HALF_ANGLE_DEG:
        return "front view"
    if abs(azimuth) > 180.0 - BACK_HALF_ANGLE_DEG:
        return "back view"
    return "side view"


def caption(scene: Scene, camera: Camera | None = None) -> str:
    """"a red cube" (or "an orange cube"); with a camera, "a red cube, front view"."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    text = f"{article} {scene.colour} {scene.shape}"
    return text if camera is None else f"{text}, {view_phrase(camera)}"


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
