"""Measuring fields and splats against images: deterministic renders of cameras and PSNR."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gendistill.convert.data import MultiViewData
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, GaussianRenderer
from gendistill.render.nerf import RadianceField, render_cameras


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1], in dB."""
    return psnr_from_mse((a.detach().float() - b.detach().float()).square().mean().item())


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error of values in [0, 1]."""
    return -10.0 * math.log10(max(mse, 1e-12))


def render_views(field: RadianceField, data: MultiViewData, num_samples: int = 48) -> Tensor:
    """The field's deterministic renders (C, 3, H, W) of ``data``'s cameras over its background."""
    with torch.no_grad():
        return render_cameras(field, data.cameras, num_samples, background=data.background)[0]


def field_psnr(field: RadianceField, data: MultiViewData, num_samples: int = 48) -> float:
    """PSNR of the field's renders against ``data``'s images."""
    return psnr(render_views(field, data, num_samples), data.images)


def teacher_views(teacher: RadianceField, cameras: Cameras, background: Tensor, num_samples: int = 64) -> MultiViewData:
    """A field's deterministic renders of ``cameras`` as multi-view data (the images a student is fitted to)."""
    with torch.no_grad():
        rgb, _ = render_cameras(teacher, cameras, num_samples, background=background)
    return MultiViewData(cameras, rgb, background)


def render_splats(splats: GaussianParams, cameras: Cameras, background: Tensor,
                  renderer: GaussianRenderer | None = None, batch: int = 4) -> Tensor:
    """Renders (C, 3, H, W) of ``splats`` without gradients, a few cameras at a time."""
    renderer = renderer or GaussianRenderer()
    with torch.no_grad():
        return torch.cat([renderer.render(splats, cameras[i:i + batch], background=background).rgb
                          for i in range(0, len(cameras), batch)])


def splat_views(splats: GaussianParams, cameras: Cameras, background: Tensor) -> MultiViewData:
    """The splats' renders of ``cameras`` as training data for a field (Gaussians -> NeRF)."""
    return MultiViewData(cameras, render_splats(splats, cameras, background), background)
