"""Coarse-to-fine training renders: make the early views small, then upsample them to the asked size.

Magic3D (Lin et al. 2023) optimises a coarse stage at low resolution before the fine one; DreamFusion renders
at 64x64 throughout. Here the early steps of a run render at a fraction of the size (the cost of a NeRF render
is per ray) and the result is upsampled bilinearly, so the guidance still sees images of the size it expects.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gendistill.render.cameras import Cameras


def coarse_cameras(cameras: Cameras, scale: float) -> Cameras:
    """The same cameras with their images ``scale`` times as wide and high (at least 1 pixel): same field of
    view, intrinsics scaled with the pixel grid."""
    width, height = max(1, round(cameras.width * scale)), max(1, round(cameras.height * scale))
    sx, sy = width / cameras.width, height / cameras.height
    Ks = cameras.Ks.clone()  # noqa: N806 - gsplat's name
    Ks[:, 0, :] *= sx
    Ks[:, 1, :] *= sy
    return Cameras(cameras.viewmats, Ks, width, height)


def upsample_render(rgb: Tensor, alpha: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """rgb (C, 3, h, w) and alpha (C, 1, h, w) resized bilinearly to (height, width), differentiably."""
    size = (height, width)
    return (F.interpolate(rgb, size=size, mode="bilinear", align_corners=False),
            F.interpolate(alpha, size=size, mode="bilinear", align_corners=False))
