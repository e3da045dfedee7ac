"""Depth renders as images: what a depth-branch teacher learns and what structure-aware SDS scores.

A camera-frame depth map becomes a grey image over the shapes world's white background: the object's bounding
sphere spans black (its nearest point to the camera) to light grey (its farthest), the background is white
(the farthest of all). Grey images stay inside the RGB teacher's VAE's domain, so a depth teacher is the RGB
teacher fine-tuned on these images, with the same latents, text encoder and prompts.
"""

from __future__ import annotations

from torch import Tensor

from gendistill.domains.shapes.intersect import BOUNDING_RADIUS
from gendistill.render.cameras import DISTANCE

FAR_GREY = 0.8
"""The grey of the bounding sphere's far side: kept apart from the white background."""


def depth_image(depth: Tensor, alpha: Tensor, distance: float = DISTANCE, radius: float = BOUNDING_RADIUS) -> Tensor:
    """(N, 1, H, W) depth and coverage to (N, 3, H, W) grey in [0, 1]: ``FAR_GREY * (z - near) / (far - near)``
    inside (near and far: the bounding sphere's), composited over white by ``alpha``."""
    near, far = distance - radius, distance + radius
    grey = ((depth - near) / (far - near)).clamp(0, 1) * FAR_GREY
    image = alpha * grey + (1 - alpha)
    return image.expand(-1, 3, -1, -1).contiguous()


def image_depth(image: Tensor, distance: float = DISTANCE, radius: float = BOUNDING_RADIUS) -> Tensor:
    """The inverse of :func:`depth_image` inside the object: (N, 3, H, W) grey to (N, 1, H, W) depth (the
    channel mean; values above ``FAR_GREY`` read as the far side)."""
    near, far = distance - radius, distance + radius
    grey = image.mean(dim=1, keepdim=True).clamp(0, FAR_GREY) / FAR_GREY
    return near + grey * (far - near)
