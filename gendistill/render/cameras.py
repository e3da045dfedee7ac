"""Batched pinhole cameras as tensors, in gsplat's conventions.

World-to-camera ``viewmats`` (C, 4, 4) use OpenCV camera axes (x right, y down, z forward); intrinsics
``Ks`` (C, 3, 3) map a camera-frame point ``p`` to the pixel ``(K @ p)[:2] / p.z``, where pixel (row v, column
u) covers ``[u, u+1) x [v, v+1)`` and has its centre at ``(u + 0.5, v + 0.5)``.

:func:`orbit` builds a turntable in a z-up world with azimuth 0 on +x, the same cameras as the shapes world's
``stack_cameras(orbit_cameras(...))``; this layer does not import the domain, so any object with
``viewmats``, ``Ks``, ``width`` and ``height`` converts with :meth:`Cameras.from_batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.errors import check_range


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
        """Any object with ``viewmats``, ``Ks``, ``width`` and ``height`` (e.g. the shapes' CameraBatch)."""
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


def orbit(n: int, elevation_deg: float = 20.0, distance: float = 4.0, fov_deg: float = 35.0,
          width: int = 64, height: int = 64, *, start_azimuth_deg: float = 0.0) -> Cameras:
    """``n`` cameras evenly spaced in azimuth at one elevation, looking at the origin of a z-up world.

    Camera ``i`` sits at azimuth ``a = (start + 360 i / n) mod 360`` and elevation ``e``, at
    ``distance * (cos e cos a, cos e sin a, sin e)``; azimuth 0 is on +x and 90 on +y. ``fov_deg`` is the
    vertical field of view, pixels are square and the principal point is the image centre.
    """
    check_range("n", n, 1, None)
    check_range("elevation_deg", elevation_deg, -89.0, 89.0)
    check_range("distance", distance, 0.0, None)
    check_range("fov_deg", fov_deg, 1.0, 170.0)
    check_range("width", width, 1, None)
    check_range("height", height, 1, None)
    azimuths = [(start_azimuth_deg + 360.0 * i / n) % 360.0 for i in range(n)]
    viewmats = torch.stack([_look_at_origin(a, elevation_deg, distance) for a in azimuths])
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(viewmats, K.expand(n, 3, 3).clone(), width, height)


def _look_at_origin(azimuth_deg: float, elevation_deg: float, distance: float) -> Tensor:
    """World-to-camera (4, 4) float32 of a camera on the sphere looking at the origin, world z up.

    Closed form in float64 (rows: right, down, forward), cast once at the end.
    """
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    ca, sa, ce, se = math.cos(a), math.sin(a), math.cos(e), math.sin(e)
    position = (distance * ce * ca, distance * ce * sa, distance * se)
    rows = ((-sa, ca, 0.0), (se * ca, se * sa, -ce), (-ce * ca, -ce * sa, -se))
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.tensor(rows, dtype=torch.float64)
    m[:3, 3] = -m[:3, :3] @ torch.tensor(position, dtype=torch.float64)
    return m.float()
