"""Differentiable, seeded image augmentations for augmented score distillation.

DiffSketcher (Xing et al. 2023, arXiv 2306.14685; ximinng/DiffSketcher) scores its strokes through a random
perspective warp and a random resized crop before the image is encoded, so that the strokes must read as the
prompt from many framings, not from one exact pixel grid (the reference code applies torchvision's
``RandomPerspective(fill=1, p=1, distortion_scale=0.5)`` and ``RandomResizedCrop(scale=(0.7, 0.9))``). Here both are
one ``grid_sample`` each, differentiable in the image, with every draw taken from a ``torch.Generator``:

- perspective: the image's corners move inward by up to ``distortion * half the side`` each (torchvision's
  rule); the homography from the moved corners back to the image's is solved exactly (``homography``);
- resized crop: a window of ``scale`` times the area and ``ratio`` aspect at a uniform position, resized to
  the input's size. Outside the image, the fill is white (the canvas of a sketch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.errors import check_range, key_path


@dataclass
class AugmentConfig:
    """DiffSketcher's augmentation: a perspective warp, then a resized crop (both on by default)."""

    distortion: float = 0.5
    """Largest inward corner shift, as a fraction of half the side (0: no perspective warp)."""
    crop_scale: tuple[float, float] = (0.7, 0.9)
    """Range of the crop's area as a fraction of the image's ((1, 1): no crop)."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Range of the crop's aspect ratio (width / height), drawn log-uniformly."""
    fill: float = 1.0
    """Value outside the image (white)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "distortion"), self.distortion, 0.0, 1.0)
        check_range(f"{key_path(path, 'crop_scale')}[0]", self.crop_scale[0], 0.01, 1.0)
        check_range(f"{key_path(path, 'crop_scale')}[1]", self.crop_scale[1], self.crop_scale[0], 1.0)
        check_range(f"{key_path(path, 'crop_ratio')}[0]", self.crop_ratio[0], 0.01)
        check_range(f"{key_path(path, 'crop_ratio')}[1]", self.crop_ratio[1], self.crop_ratio[0])


def augment(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Each image of (B, C, H, W) warped and cropped by its own draws (see the module docstring)."""
    b = images.shape[0]
    corners = _moved_corners(b, config.distortion, generator)
    grid = perspective_grid(corners, images.shape[-2], images.shape[-1]).to(images)
    grid = _crop_grid(grid, config, generator)
    return _sample(images, grid, config.fill)


def homography(source: Tensor, target: Tensor) -> Tensor:
    """The 3x3 homographies (B, 3, 3), last entry 1, mapping each of 4 ``source`` points (B, 4, 2) to ``target``."""
    x, y = source[..., 0], source[..., 1]
    u, v = target[..., 0], target[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (B, 8, 8)
    h = torch.linalg.solve(a, torch.cat([u, v], dim=1))
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def perspective_grid(corners: Tensor, height: int, width: int) -> Tensor:
    """A ``grid_sample`` grid (B, H, W, 2) in [-1, 1] units that puts the input's corners at ``corners`` of the
    output (B, 4, 2: top-left, top-right, bottom-right, bottom-left, in [-1, 1] units), as torchvision's
    perspective transform does: output points outside that quadrilateral read outside the input."""
    square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    h = homography(corners.double(), square.expand(corners.shape[0], -1, -1))
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)
    mapped = points @ h.transpose(1, 2)
    return (mapped[..., :2] / mapped[..., 2:]).view(-1, height, width, 2).float()


def _moved_corners(batch: int, distortion: float, generator: torch.Generator) -> Tensor:
    """The square's corners, each moved inward by a uniform fraction of ``distortion`` per axis."""
    square = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    inward = -square  # the direction toward the centre, per axis
    shift = torch.rand(batch, 4, 2, generator=generator) * distortion
    return square + inward * shift


def _crop_grid(grid: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """``grid`` restricted to a random window (the crop), which then fills the output."""
    b = grid.shape[0]
    u = torch.rand(b, 4, generator=generator)
    lo, hi = config.crop_scale
    area = lo + (hi - lo) * u[:, 0]
    log_ratio = torch.log(torch.tensor(config.crop_ratio[0])) + u[:, 1] * torch.log(
        torch.tensor(config.crop_ratio[1] / config.crop_ratio[0]))
    ratio = log_ratio.exp()
    w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)  # fractions of the side
    cx, cy = (u[:, 2] * (1 - w) + w / 2) * 2 - 1, (u[:, 3] * (1 - h) + h / 2) * 2 - 1  # centres in [-1, 1]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    window = F.affine_grid(theta, [b, 2, *grid.shape[1:3]], align_corners=False).to(grid)
    return _sample(grid.permute(0, 3, 1, 2), window, None).permute(0, 2, 3, 1)


def _sample(images: Tensor, grid: Tensor, fill: float | None) -> Tensor:
    """Bilinear ``grid_sample``; with ``fill``, points outside the input read ``fill`` (else the border)."""
    if fill is None:
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    shifted = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return shifted + fill  # outside reads 0 + fill
