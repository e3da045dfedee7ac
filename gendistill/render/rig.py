"""The orbit rig: cameras on a sphere around the origin, drawn at random (training) or evenly around the
object at one elevation (a turntable, held-out views).

Conventions (z up, azimuth 0 on +x, OpenCV camera axes) are :mod:`gendistill.render.cameras`'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gendistill.errors import check_range
from gendistill.render.cameras import DISTANCE, FOV_DEG, Camera, Cameras, stack_cameras

ELEVATION_RANGE_DEG = (-10.0, 60.0)
"""Default elevations that :meth:`OrbitRig.sample` draws from (uniformly), in degrees."""


@dataclass(frozen=True)
class OrbitRig:
    """Cameras at one distance from the origin, looking at it, with one field of view and image size."""

    distance: float = DISTANCE
    """Distance from the camera to the origin."""
    fov_deg: float = FOV_DEG
    """Vertical field of view in degrees."""
    elevation_range_deg: tuple[float, float] = ELEVATION_RANGE_DEG
    """Elevations :meth:`sample` draws uniformly, in degrees (low, high) within [-89, 89]."""
    width: int = 64
    """Image width in pixels."""
    height: int = 64
    """Image height in pixels."""

    def __post_init__(self) -> None:
        lo, hi = self.elevation_range_deg
        check_range("elevation_range_deg[0]", lo, -89.0, 89.0)
        check_range("elevation_range_deg[1]", hi, lo, 89.0)
        self.camera(0.0, lo)  # validates distance, field of view and size once, with the camera's messages

    def camera(self, azimuth_deg: float, elevation_deg: float) -> Camera:
        """The rig's camera at these angles."""
        return Camera(azimuth_deg, elevation_deg, self.distance, self.fov_deg, self.width, self.height)

    def from_uniform(self, u_azimuth: float, u_elevation: float) -> Camera:
        """The camera that two uniform [0, 1) numbers pick: azimuth ``360 u_a``, elevation ``lo + (hi - lo) u_e``."""
        lo, hi = self.elevation_range_deg
        return self.camera(360.0 * u_azimuth, lo + (hi - lo) * u_elevation)

    def sample(self, n: int, generator: torch.Generator) -> list[Camera]:
        """``n`` cameras with azimuth uniform in [0, 360) and elevation uniform in ``elevation_range_deg``.

        Draws one (n, 2) float64 uniform tensor from ``generator`` (azimuth, elevation per row), so the first
        k cameras of a draw of n > k equal a draw of k from the same generator state.
        """
        check_range("n", n, 0, None)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return [self.from_uniform(ua, ue) for ua, ue in u.tolist()]

    def orbit(self, n: int, elevation_deg: float = 20.0, *, start_azimuth_deg: float = 0.0) -> list[Camera]:
        """``n`` cameras evenly spaced in azimuth at one elevation (a turntable): camera ``i`` sits at azimuth
        ``(start + 360 i / n) mod 360``, so the default starts at the front (+x)."""
        check_range("n", n, 1, None)
        return [self.camera((start_azimuth_deg + 360.0 * i / n) % 360.0, elevation_deg) for i in range(n)]


def orbit(n: int, elevation_deg: float = 20.0, distance: float = DISTANCE, fov_deg: float = FOV_DEG,
          width: int = 64, height: int = 64, *, start_azimuth_deg: float = 0.0) -> Cameras:
    """:meth:`OrbitRig.orbit` as one batch, for renderers: ``n`` cameras evenly spaced in azimuth."""
    rig = OrbitRig(distance, fov_deg, ELEVATION_RANGE_DEG, width, height)
    return stack_cameras(rig.orbit(n, elevation_deg, start_azimuth_deg=start_azimuth_deg))
