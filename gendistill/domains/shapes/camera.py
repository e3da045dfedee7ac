"""The shapes world's cameras: the one camera model of :mod:`gendistill.render.cameras` and the orbit rig of
:mod:`gendistill.render.rig` at the rig's defaults (distance 4, 35 deg field of view, elevations -10..60 deg,
64x64 images), under the names the shapes world has always used.

Conventions (z up, the object's front on +x, OpenCV camera axes, pixel centres at +0.5) are
``gendistill.render.cameras``'.
"""

from __future__ import annotations

import torch

from gendistill.render.cameras import DISTANCE, FOV_DEG, Camera, Cameras, stack_cameras
from gendistill.render.rig import ELEVATION_RANGE_DEG, OrbitRig

CameraBatch = Cameras
"""What :func:`stack_cameras` returns (the render layer's :class:`~gendistill.render.cameras.Cameras`)."""

__all__ = ["DISTANCE", "ELEVATION_RANGE_DEG", "FOV_DEG", "Camera", "CameraBatch", "camera_from_uniform",
           "orbit_cameras", "sample_cameras", "stack_cameras"]


def sample_cameras(n: int, generator: torch.Generator, *, elevation_range_deg=ELEVATION_RANGE_DEG,
                   width: int = 64, height: int = 64) -> list[Camera]:
    """:meth:`OrbitRig.sample`: azimuth uniform in [0, 360), elevation uniform in ``elevation_range_deg``."""
    rig = OrbitRig(elevation_range_deg=tuple(elevation_range_deg), width=width, height=height)
    return rig.sample(n, generator)


def camera_from_uniform(u_azimuth: float, u_elevation: float, *, elevation_range_deg=ELEVATION_RANGE_DEG,
                        width: int = 64, height: int = 64, distance: float | None = None) -> Camera:
    """:meth:`OrbitRig.from_uniform`: the camera that two uniform [0, 1) numbers pick (at ``distance``, None:
    the rig's default)."""
    extra = {} if distance is None else {"distance": distance}
    rig = OrbitRig(elevation_range_deg=tuple(elevation_range_deg), width=width, height=height, **extra)
    return rig.from_uniform(u_azimuth, u_elevation)


def orbit_cameras(n: int, elevation_deg: float = 20.0, *, start_azimuth_deg: float = 0.0,
                  width: int = 64, height: int = 64) -> list[Camera]:
    """:meth:`OrbitRig.orbit`: ``n`` cameras evenly spaced in azimuth at one elevation, from the front."""
    return OrbitRig(width=width, height=height).orbit(n, elevation_deg, start_azimuth_deg=start_azimuth_deg)
