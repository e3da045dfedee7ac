"""The one camera model: pinhole cameras looking at an object at the origin, in gsplat's conventions.

World frame: right-handed, **z up**; the object sits at the origin. A :class:`Camera` at azimuth ``a`` and
elevation ``e`` sits at ``distance * (cos e cos a, cos e sin a, sin e)`` and looks at the origin, so azimuth 0
puts the camera on the **+x axis**: +x is the object's front. Azimuth grows counter-clockwise seen from above
(90 deg is on +y, 180 deg is the back on -x); elevation is positive above the horizon.

Camera frame (OpenCV, as gsplat's ``viewmats`` expect): x right, y down, z forward (towards the object);
``viewmat`` maps world to camera. Image: pixel (row v, column u) covers ``[u, u+1) x [v, v+1)``, its centre is
at ``(u + 0.5, v + 0.5)``, and a camera-frame point ``p`` lands at ``(K @ p)[:2] / p.z`` (gsplat's
``_persp_proj``). ``fov_deg`` is the vertical field of view; pixels are square (fx = fy).

:class:`Camera` is one view (angles, exact maths in float64); :class:`Cameras` is a batch of C views as
tensors (``viewmats`` (C, 4, 4), ``Ks`` (C, 3, 3)), what renderers take; :func:`stack_cameras` turns the
first into the second. Rigs that place cameras (sphere samples, turntables) are in :mod:`gendistill.render.rig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from gendistill.errors import check_range

DISTANCE = 4.0
"""Default distance from the camera to the origin: an object in the unit ball then has an image radius of
~26 px in a 64 px frame at the default field of view (~6 px of margin)."""
FOV_DEG = 35.0
"""Default vertical field of view in degrees."""


@dataclass(frozen=True)
class Camera:
    """A pinhole camera at (azimuth, elevation, distance) looking at the origin with world z up."""

    azimuth_deg: float
    """Angle around the world z axis; 0 is the front (+x), 90 is +y, 180 the back (-x)."""
    elevation_deg: float
    """Angle above the xy plane, in [-89, 89]."""
    distance: float = DISTANCE
    """Distance from the origin, > 1 (outside the unit ball that holds the object)."""
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
        m = torch.eye(4, dtype=torch.float64)
        m[:3, :3] = torch.tensor(_rotation_rows(self), dtype=torch.float64)
        m[:3, 3] = -m[:3, :3] @ torch.tensor(_position(self), dtype=torch.float64)
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
class Cameras:
    """C pinhole cameras sharing one image size (gsplat's ``viewmats`` / ``Ks`` / ``width`` / ``height``)."""

    viewmats: Tensor
    """World-to-camera transforms, (C, 4, 4), OpenCV axes."""
    Ks: Tensor  # noqa: N815 - gsplat's name
    """Intrinsics, (C, 3, 3)."""
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""

    def __post_init__(self) -> None:
        c = self.viewmats.shape[0] if self.viewmats.dim() == 3 else -1
        if self.viewmats.shape != (c, 4, 4) or self.Ks.shape != (c, 3, 3):
            raise ValueError(f"Cameras needs viewmats (C, 4, 4) and Ks (C, 3, 3), got "
                             f"{tuple(self.viewmats.shape)} and {tuple(self.Ks.shape)}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def from_batch(cls, batch) -> Cameras:
        """Any object with ``viewmats``, ``Ks``, ``width`` and ``height`` (e.g. another library's batch)."""
        return cls(batch.viewmats, batch.Ks, int(batch.width), int(batch.height))

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index) -> Cameras:
        """A sub-batch: an int keeps the batch dimension, slices and index tensors select cameras."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)

    @property
    def positions(self) -> Tensor:
        """Camera centres in world coordinates, (C, 3)."""
        R, t = self.viewmats[:, :3, :3], self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device=None, dtype: torch.dtype | None = None) -> Cameras:
        """The same cameras on another device and/or in another floating dtype."""
        return Cameras(self.viewmats.to(device=device, dtype=dtype), self.Ks.to(device=device, dtype=dtype),
                       self.width, self.height)


def stack_cameras(cameras: Sequence[Camera]) -> Cameras:
    """Stack cameras of one image size into a batch: (C, 4, 4) viewmats and (C, 3, 3) Ks."""
    if not cameras:
        raise ValueError("stack_cameras needs at least one camera")
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras must share one image size, got {sorted(sizes)}")
    (width, height), = sizes
    return Cameras(torch.stack([c.viewmat for c in cameras]), torch.stack([c.K for c in cameras]), width, height)
