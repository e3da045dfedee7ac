"""A tiny shapes scene for the NeRF tests: a few analytic views of one object at low resolution."""

from __future__ import annotations

import math

import torch

from gendistill.domains.shapes import Scene, orbit_cameras, render_batch, stack_cameras
from gendistill.render.cameras import Cameras

WHITE = torch.ones(3)


def tiny_scene(n_views: int = 8, size: int = 24, shape: str = "cube", colour: str = "red",
               elevation: float = 20.0) -> tuple[Cameras, torch.Tensor]:
    """Cameras and ground-truth renders (C, 3, H, W) of one shapes object on a turntable."""
    cams = orbit_cameras(n_views, elevation, width=size, height=size)
    images = render_batch([Scene(shape, colour)] * n_views, cams).rgb
    return Cameras.from_batch(stack_cameras(cams)), images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10.0 * math.log10(((a - b) ** 2).mean().clamp_min(1e-12).item())
