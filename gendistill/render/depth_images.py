"""Depth maps as grey images over a white background: what a depth-branch teacher denoises and what
structure-aware SDS scores on a render's depth (HumanGaussian's depth branch; Liu et al. 2024).

Depth ``z`` inside a depth range ``[near, far]`` maps linearly to grey ``far_grey * (z - near) / (far - near)``
(near is black), composited over white by the coverage ``alpha``: the background reads as farther than anything.
Grey images stay in an RGB VAE's domain, so the depth branch can reuse the RGB teacher's VAE and latents.
"""

from __future__ import annotations

from torch import Tensor


def depth_to_grey(depth: Tensor, alpha: Tensor, near: float, far: float, far_grey: float) -> Tensor:
    """(N, 1, H, W) depth and coverage to (N, 3, H, W) grey in [0, 1]; differentiable in both."""
    if far <= near:
        raise ValueError(f"the depth range must have far > near, got near={near}, far={far}")
    grey = ((depth - near) / (far - near)).clamp(0, 1) * far_grey
    image = alpha * grey + (1 - alpha)
    return image.expand(-1, 3, -1, -1).contiguous()


def grey_to_depth(image: Tensor, near: float, far: float, far_grey: float) -> Tensor:
    """The inverse of :func:`depth_to_grey` inside the object: (N, 3, H, W) grey to (N, 1, H, W) depth (the
    channel mean; values above ``far_grey`` read as ``far``)."""
    grey = image.mean(dim=1, keepdim=True).clamp(0, far_grey) / far_grey
    return near + grey * (far - near)
