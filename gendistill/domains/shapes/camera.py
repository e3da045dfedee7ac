"""Pinhole cameras on a sphere around the origin, in gsplat's conventions.

World frame: right-handed, **z up**; the object sits at the origin. A camera at azimuth ``a`` and elevation
``e`` sits at ``distance * (cos e cos a, cos e sin a, sin e)`` and looks at the origin, so azimuth 0 puts
the camera on the **+x axis**: +x is the object's front. Azimuth grows counter-clockwise seen from above
(90 deg is on +y, 180 deg is the back on -x); elevation is positive above the horizon.

Camera frame (OpenCV, as gsplat's ``viewmats`` expect): x right, y down, z forward (towards the object);
``viewmat`` maps world to camera. Image: pixel (row v, column u) covers ``[u, u+1) x [v, v+1)``, its centre is
at ``(u + 0.5, v + 0.5)``, and a camera-frame point ``p`` lands at ``(K @ p)[:2] / p.z`` (gsplat's
``_persp_proj``). ``fov_deg`` is the vertical field of view; pixels are square (fx = fy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from gendistill.errors import check_range

DISTANCE = 4.0
"""Distance from the camera to the origin. Every shape fits in the unit ball, whose image then has a
radius of ~26 px in a 64 px frame: ~6 px of margin at the edges."""
FOV_DEG = 35.0
"""Vertical field of view in degrees."""
ELEVATION_RANGE_DEG = (-10.0, 60.0)
"""Elevations that sample_cameras draws from (uniformly)."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at (azimuth, elevation, distance) looking at the origin with world z up."""

    azimuth_deg: float
    """Angle around the world z axis; 0 is the front (+x), 90 is +y, 180 the back (-x)."""
    elevation_deg: float
    """Angle above the xy plane, in (-89, 89)."""
    distance: float = DISTANCE
    """Distance from the origin, > 1 (outside the unit ball that holds every shape)."""
    fov_deg: float = FOV_DEG
    """Vertical field of view in degrees."""
    width: int = 64
    """Image width in pixels."""
    height: int = 64
    """Image height in pixels."""

    def __post_init__(self) -> None:
        check_range("elevation_deg", self.elevation_deg, -89.0, 89.0)
        check_range("distance", self.distance, 1.0001, None)
        check_range("fov_deg", self.fov_deg, 1.0, 170.0)
        check_range("width", self.width, 1, None)
        check_range("height", self.height, 1, None)

    @property
    def position(self) -> Tensor:
        """Camera centre in world coordinates, (3,) float32."""
        return torch.tensor(_position(self), dtype=torch.float32)

    @property
    def rotation(self) -> Tensor:
        """World-to-camera rotation, (3, 3) float32: rows are the camera's right, down, forward axes."""
        return torch.tensor(_rotation_rows(self), dtype=torch.float32)

    @property
    def viewmat(self) -> Tensor:
        """World-to-camera transform, (4, 4) float32, OpenCV axes (x right, y down, z forward)."""
        rows = _rotation_rows(self)
        pos = _position(self)
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = torch.tensor(rows, dtype=torch.float64)
        m[:3, 3] = -m[:3, :3] @ torch.tensor(pos, dtype=torch.float64)
        return m.float()

    @property
    def camtoworld(self) -> Tensor:
        """Camera-to-world transform, (4, 4) float32: the inverse of viewmat."""
        return torch.linalg.inv(self.viewmat.double()).float()

    @property
    def focal(self) -> float:
        """Focal length in pixels (fx = fy)."""
        return 0.5 * self.height / math.tan(math.radians(self.fov_deg) / 2)

    @property
    def K(self) -> Tensor:  # noqa: N802 - the standard name for intrinsics
        """Intrinsics, (3, 3) float32; the principal point is the image centre (W/2, H/2)."""
        f = self.focal
        return torch.tensor([[f, 0.0, self.width / 2], [0.0, f, self.height / 2], [0.0, 0.0, 1.0]])


def _position(cam: Camera) -> tuple[float, float, float]:
    a, e = math.radians(cam.azimuth_deg), math.radians(cam.elevation_deg)
    return (cam.distance * math.cos(e) * math.cos(a), cam.distance * math.cos(e) * math.sin(a),
            cam.distance * math.sin(e))


def _rotation_rows(cam: Camera) -> tuple[tuple[float, ...], ...]:
    """Right, down and forward unit vectors in world coordinates (closed form of a look-at with z up)."""
    a, e = math.radians(cam.azimuth_deg), math.radians(cam.elevation_deg)
    ca, sa, ce, se = math.cos(a), math.sin(a), math.cos(e), math.sin(e)
    forward = (-ce * ca, -ce * sa, -se)
    right = (-sa, ca, 0.0)  # forward x world-up, normalised
    down = (se * ca, se * sa, -ce)  # forward x right, so right x down = forward (right-handed)
    return right, down, forward


@dataclass(frozen=True)
class CameraBatch:
    """Cameras stacked for batched renderers (gsplat's ``viewmats`` / ``Ks`` arguments)."""

    viewmats: Tensor
    """World-to-camera transforms, (N, 4, 4) float32."""
    Ks: Tensor  # noqa: N815
    """Intrinsics, (N, 3, 3) float32."""
    width: int
    """Image width shared by every camera."""
    height: int
    """Image height shared by every camera."""

    @property
    def positions(self) -> Tensor:
        """Camera centres in world coordinates, (N, 3)."""
        R, t = self.viewmats[:, :3, :3], self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)


def stack_cameras(cameras: Sequence[Camera]) -> CameraBatch:
    """Stack cameras of one image size into (N, 4, 4) viewmats and (N, 3, 3) Ks."""
    if not cameras:
        raise ValueError("stack_cameras needs at least one camera")
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras must share one image size, got {sorted(sizes)}")
    (width, height), = sizes
    return CameraBatch(torch.stack([c.viewmat for c in cameras]), torch.stack([c.K for c in cameras]),
                       width, height)


def sample_cameras(n: int, generator: torch.Generator, *, elevation_range_deg=ELEVATION_RANGE_DEG,
                   width: int = 64, height: int = 64) -> list[Camera]:
    """``n`` cameras with azimuth uniform in [0, 360) and elevation uniform in ``elevation_range_deg``.

    The first k cameras of a draw of n > k equal a draw of k from the same generator state.
    """
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return [camera_from_uniform(ua, ue, elevation_range_deg=elevation_range_deg, width=width, height=height)
            for ua, ue in u.tolist()]


def camera_from_uniform(u_azimuth: float, u_elevation: float, *, elevation_range_deg=ELEVATION_RANGE_DEG,
                        width: int = 64, height: int = 64) -> Camera:
    """The camera that two uniform [0, 1) numbers pick, as sample_cameras draws them."""
    lo, hi = elevation_range_deg
    return Camera(azimuth_deg=360.0 * u_azimuth, elevation_deg=lo + (hi - lo) * u_elevation,
                  width=width, height=height)


def orbit_cameras(n: int, elevation_deg: float = 20.0, *, start_azimuth_deg: float = 0.0,
                  width: int = 64, height: int = 64) -> list[Camera]:
    """``n`` cameras evenly spaced in azimuth at one elevation (a turntable), starting at the front."""
    return [Camera(azimuth_deg=(start_azimuth_deg + 360.0 * i / n) % 360.0, elevation_deg=elevation_deg,
                   width=width, height=height) for i in range(n)]
