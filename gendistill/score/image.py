"""The simplest thing score distillation can optimise: a batch of 2D images as free parameters.

It lets the guidance be checked and demoed without any 3D: ``render()`` plays the renderer's part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ImageParams(nn.Module):
    """``batch`` RGB images of ``height`` x ``width``: logits on a ``grid`` (pixels by default, or a
    coarser grid that is bilinearly upsampled, a smooth low-frequency parameterisation), squashed by a
    sigmoid, so ``render()`` always lies in (0, 1) and every logit gets a gradient."""

    def __init__(self, batch: int, height: int, width: int, grid: tuple[int, int] | None = None,
                 init_std: float = 0.1, generator: torch.Generator | None = None):
        super().__init__()
        if min(batch, height, width) < 1:
            raise ValueError(f"need a positive batch and size, got {batch} x {height} x {width}")
        gh, gw = grid or (height, width)
        self.size = (height, width)
        self.logits = nn.Parameter(init_std * torch.randn(batch, 3, gh, gw, generator=generator))

    @classmethod
    def from_images(cls, images: Tensor, grid: tuple[int, int] | None = None) -> ImageParams:
        """Parameters that render ``images`` (B, 3, H, W) in [0, 1] (up to the grid's resolution)."""
        batch, _, height, width = images.shape
        params = cls(batch, height, width, grid)
        target = images.detach().float().clamp(1e-4, 1 - 1e-4)
        if grid is not None and tuple(grid) != (height, width):
            target = F.interpolate(target, grid, mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            params.logits.copy_(torch.logit(target))
        return params

    def render(self) -> Tensor:
        """The images, (B, 3, H, W) in (0, 1)."""
        logits = self.logits
        if tuple(logits.shape[-2:]) != self.size:
            logits = F.interpolate(logits, self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)

    def forward(self) -> Tensor:
        return self.render()
