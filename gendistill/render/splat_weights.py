"""Carry per-pixel maps onto the 3D Gaussians that drew those pixels.

Each Gaussian i gets ``sum_views sum_pixels w_i(p) m(p)``, with ``w_i(p)`` its alpha-blending weight at pixel
p (its alpha times the transmittance in front of it): the share of the pixel it drew. GSEditPro (Sun et al.
2024, "GSEditPro: 3D Gaussian Splatting Editing with Attention-based Progressive Localization", arXiv
2411.10033, Sec. 3.2) labels Gaussians this way from the diffusion model's attention maps, accumulating them
during rasterisation. Here the rasteriser is not touched: rendering a per-Gaussian scalar ``s`` gives
``out(p) = sum_i w_i(p) s_i``, linear in ``s``, so the gradient of ``sum_p m(p) out(p)`` with respect to
``s_i`` is exactly the sum above (any backend that differentiates its features: the pure-torch rasteriser and
gsplat alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, GaussianRenderer


@dataclass(frozen=True)
class SplatWeights:
    """Per-Gaussian sums of the blending weights over every pixel of every view."""

    weighted: Tensor
    """``sum w_i(p) m(p)``, (N,)."""
    coverage: Tensor
    """``sum w_i(p)``: how much of the views the Gaussian drew, (N,)."""

    def mean(self, min_coverage: float = 1e-6) -> Tensor:
        """The map's mean over the pixels each Gaussian drew, weighted by its share of them (N,); 0 for a
        Gaussian that drew less than ``min_coverage`` in all (unseen: nothing to say about it)."""
        seen = self.coverage > min_coverage
        return torch.where(seen, self.weighted / self.coverage.clamp_min(min_coverage), torch.zeros_like(self.weighted))


def splat_weights(renderer: GaussianRenderer, params: GaussianParams, cameras: Cameras, maps: Tensor) -> SplatWeights:
    """``maps`` (C, 1, H, W), one per camera at the render's size, summed onto the Gaussians (module docstring).
    No gradient reaches ``params``."""
    n = len(params)
    if maps.shape != (len(cameras), 1, cameras.height, cameras.width):
        raise ValueError(f"maps must be (C, 1, H, W) = ({len(cameras)}, 1, {cameras.height}, {cameras.width}), "
                         f"got {tuple(maps.shape)}")
    probe = torch.zeros(n, 2, device=params.means.device, requires_grad=True)
    with torch.enable_grad():
        frozen = _detached(params)
        out = renderer.render_features(frozen, cameras, probe)  # (C, 2, H, W): channel 0 meets m, 1 meets 1
        total = (out[:, :1] * maps.to(out)).sum() + out[:, 1:].sum()
        (grad,) = torch.autograd.grad(total, probe)
    return SplatWeights(grad[:, 0].detach(), grad[:, 1].detach())


def _detached(params: GaussianParams) -> GaussianParams:
    """The same Gaussians as plain tensors outside ``params``' graph (GaussianParams copies them)."""
    return GaussianParams(params.means, params.log_scales, params.quats, params.opacity_logits, params.sh0,
                          params.shN)
