"""The shapes world's depth images: :mod:`gendistill.render.depth_images` over the range of its bounding
sphere seen from the world's camera distance (near: the sphere's nearest point, black; far: its farthest,
``FAR_GREY``; background white). A depth teacher (``shapes-depth-teacher``) is the RGB teacher fine-tuned on
these images, with the same latents, text encoder and prompts; structure-aware SDS scores renders' depth in
the same range (``score.structure_aware``'s defaults).
"""

from __future__ import annotations

from torch import Tensor

from gendistill.domains.shapes.intersect import BOUNDING_RADIUS
from gendistill.render.cameras import DISTANCE
from gendistill.render.depth_images import depth_to_grey, grey_to_depth

FAR_GREY = 0.8
"""The grey of the bounding sphere's far side: kept apart from the white background."""


def depth_range(distance: float = DISTANCE, radius: float = BOUNDING_RADIUS) -> tuple[float, float]:
    """(near, far): the bounding sphere's nearest and farthest depths from a camera at ``distance``."""
    return distance - radius, distance + radius


def depth_image(depth: Tensor, alpha: Tensor, distance: float = DISTANCE, radius: float = BOUNDING_RADIUS) -> Tensor:
    """(N, 1, H, W) depth and coverage to (N, 3, H, W) grey in [0, 1] over white."""
    return depth_to_grey(depth, alpha, *depth_range(distance, radius), FAR_GREY)


def image_depth(image: Tensor, distance: float = DISTANCE, radius: float = BOUNDING_RADIUS) -> Tensor:
    """The inverse of :func:`depth_image` inside the object: (N, 3, H, W) grey to (N, 1, H, W) depth."""
    return grey_to_depth(image, *depth_range(distance, radius), FAR_GREY)
