"""Image-space priors of score distillation on renders, shared by every scene kind: a blur for the guidance's
gradient on the renders and a total-variation prior on the surface colour."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with std ``sigma`` pixels (radius 3 sigma), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def surface_total_variation(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Total variation of the scene's own colour, not of the silhouette: the renders (B, 3, H, W) are
    un-blended from the background, ``(rgb - (1 - alpha) bg) / alpha``, and the absolute differences of
    vertical and horizontal neighbours are weighted by both pixels' (detached) alpha, then averaged."""
    a = alpha.detach()
    colour = (rgb - (1 - alpha) * background.view(1, -1, 1, 1)) / alpha.clamp_min(1e-3)
    dy = (colour[..., 1:, :] - colour[..., :-1, :]).abs() * (a[..., 1:, :] * a[..., :-1, :])
    dx = (colour[..., :, 1:] - colour[..., :, :-1]).abs() * (a[..., :, 1:] * a[..., :, :-1])
    return dy.mean() + dx.mean()
