"""A 360-degree turntable of a 3D result: frames, a GIF, and an MP4 when imageio's ffmpeg plugin is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from gendistill.render.cameras import Cameras
from gendistill.render.rig import orbit

RenderViews = Callable[[Cameras, Tensor], tuple[Tensor, Tensor]]
"""``render_views(cameras, background) -> (rgb (C, 3, H, W), alpha (C, 1, H, W))``, e.g. a scene's."""


def mp4_available() -> bool:
    """Whether imageio can write MP4 here (it needs the ``imageio-ffmpeg`` package)."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


@torch.no_grad()
def render_turntable(render_views: RenderViews, frames: int = 36, elevation_deg: float = 20.0, size: int = 128,
                     background: tuple[float, float, float] = (1.0, 1.0, 1.0), distance: float = 4.0,
                     fov_deg: float = 35.0, chunk: int = 6) -> Tensor:
    """``frames`` views evenly spaced in azimuth from the front (+x), (frames, 3, size, size) in [0, 1],
    rendered ``chunk`` cameras at a time by ``render_views`` (a scene's, see gendistill.render.scene)."""
    cameras = orbit(frames, elevation_deg, distance, fov_deg, size, size)
    bg = torch.tensor(background)
    parts = [render_views(cameras[i:i + chunk], bg)[0].clamp(0, 1).cpu() for i in range(0, frames, chunk)]
    return torch.cat(parts)


def save_turntable(frames: Tensor, out_dir: str | Path, fps: int = 12, name: str = "turntable") -> list[Path]:
    """Write ``name.gif`` (looping) and, when possible, ``name.mp4`` into ``out_dir``; returns the paths."""
    import imageio.v3 as iio

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    array = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    paths = [out_dir / f"{name}.gif"]
    iio.imwrite(paths[0], array, duration=1000.0 / fps, loop=0)
    if mp4_available():
        even = np.ascontiguousarray(array[:, : array.shape[1] // 2 * 2, : array.shape[2] // 2 * 2])
        paths.append(out_dir / f"{name}.mp4")
        iio.imwrite(paths[1], even, fps=fps, codec="libx264", plugin="FFMPEG")
    return paths
