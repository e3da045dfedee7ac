"""An occupancy grid over a field's cube: which cells can hold density, so that rays skip the rest.

Instant-NGP (Müller et al. 2022, appendix E.2) and nerfacc's ``OccGridEstimator`` (Li et al. 2023) keep a
coarse grid of bits over the scene, refreshed every few steps from the field's own density, and march samples
only through set cells. This is a pure-torch version for small CPU fields, built for score distillation:

- a cell is set when the density at any of its 8 corners or at a point inside it (jittered with a generator,
  its centre without) exceeds ``threshold``;
- the set cells are then dilated by ``dilation`` cells: under SDS the object must be free to grow, and a
  cell just outside the surface only gets a gradient (and so density) if its samples are evaluated;
- :meth:`OccupancyGrid.span` tightens each ray's [near, far] to the stretch that crosses set cells, so a
  ray's samples all fall where the object can be; :meth:`OccupancyGrid.contains` says which samples lie in
  set cells (the others are given zero density without querying the field).

The grid is a training aid only: renders for evaluation, the turntable and the mesh read the field
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.errors import check_range, key_path


@dataclass
class OccupancyConfig:
    """An occupancy grid that skips empty space in training renders (0 ``resolution``: off)."""

    resolution: int = 0
    """Cells per axis over the field's cube; 0: no grid, every sample queries the field."""
    threshold: float = 0.05
    """Density (per unit length) above which a cell is occupied; keep it above the fresh field's
    ``initial_density`` and low enough that what the grid drops stays invisible (at most 1 - exp(-threshold x
    the ray's length in the cube) of opacity)."""
    dilation: int = 2
    """Cells added around the occupied ones (the frontier the object can grow into)."""
    update_every: int = 8
    """Steps between refreshes of the grid from the field's density."""
    march_steps: int = 64
    """Grid look-ups per ray that find its occupied stretch (no field query; about two per cell)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "resolution"), self.resolution, 0)
        check_range(key_path(path, "threshold"), self.threshold, 0.0)
        check_range(key_path(path, "dilation"), self.dilation, 0)
        check_range(key_path(path, "update_every"), self.update_every, 1)
        check_range(key_path(path, "march_steps"), self.march_steps, 2)


class OccupancyGrid:
    """Bits over the cube ``[-bound, bound]^3`` in ``resolution`` cells per axis; all set until updated."""

    def __init__(self, bound: float, resolution: int, threshold: float, dilation: int = 0,
                 march_steps: int | None = None, device: torch.device | str = "cpu"):
        self.bound, self.resolution, self.threshold, self.dilation = bound, resolution, threshold, dilation
        self.march_steps = march_steps or 2 * resolution
        """Look-ups per ray in :meth:`span`."""
        self.occupied = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)

    @property
    def cell_size(self) -> float:
        return 2.0 * self.bound / self.resolution

    @property
    def fraction(self) -> float:
        """Share of the cells that are set."""
        return self.occupied.float().mean().item()

    @torch.no_grad()
    def update(self, density: Callable[[Tensor], Tensor], generator: torch.Generator | None = None,
               chunk: int = 1 << 16) -> None:
        """Refresh the bits from ``density(points (N, 3)) -> (N,)`` at every cell's corners and one point
        inside it, then dilate."""
        r = self.resolution
        corners = self._lattice(r + 1, self._corner_axis())
        inside = self._cell_points(generator)
        corner_density = _chunked(density, corners, chunk).view(r + 1, r + 1, r + 1)
        inside_density = _chunked(density, inside, chunk).view(r, r, r)
        # a cell's max over its 8 corners: a 2x2x2 max pool of the corner lattice
        corner_max = F.max_pool3d(corner_density[None, None], kernel_size=2, stride=1)[0, 0]
        hot = torch.maximum(corner_max, inside_density) > self.threshold
        self.occupied = dilate(hot, self.dilation)

    def contains(self, points: Tensor) -> Tensor:
        """Whether each point (..., 3) lies in a set cell (points outside the cube: False)."""
        inside = (points.abs() <= self.bound).all(dim=-1)
        index = self.cell_index(points)
        r = self.resolution
        flat = (index[..., 0] * r + index[..., 1]) * r + index[..., 2]  # one gather, not three index tensors
        return inside & self.occupied.reshape(-1)[flat]

    def cell_index(self, points: Tensor) -> Tensor:
        """Integer cell coordinates (..., 3) of points (..., 3), clamped into the grid."""
        scaled = (points + self.bound) / self.cell_size
        return scaled.floor().long().clamp(0, self.resolution - 1)

    @torch.no_grad()
    def span(self, origins: Tensor, directions: Tensor, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
        """[near, far] (N,) of each ray tightened to the stretch between the first and the last of
        ``march_steps`` evenly spaced look-ups that land in set cells, widened by one look-up's length on each
        side; rays that cross no set cell get ``near == far``."""
        steps = self.march_steps
        frac = (torch.arange(steps, dtype=near.dtype, device=near.device) + 0.5) / steps
        t = near[:, None] + (far - near)[:, None] * frac  # (N, steps)
        hit = self.contains(origins[:, None, :] + t[..., None] * directions[:, None, :])
        step = (far - near) / steps
        first = torch.where(hit, t, torch.full_like(t, float("inf"))).amin(dim=-1) - step
        last = torch.where(hit, t, torch.full_like(t, float("-inf"))).amax(dim=-1) + step
        any_hit = hit.any(dim=-1)
        new_near = torch.where(any_hit, torch.maximum(first, near), near)
        new_far = torch.where(any_hit, torch.minimum(last, far), near)
        return new_near, new_far

    def _corner_axis(self) -> Tensor:
        return torch.linspace(-self.bound, self.bound, self.resolution + 1, device=self.occupied.device)

    def _cell_points(self, generator: torch.Generator | None) -> Tensor:
        r, device = self.resolution, self.occupied.device
        lower = self._lattice(r, self._corner_axis()[:-1])
        offset = (torch.full_like(lower, 0.5) if generator is None else
                  torch.rand(lower.shape, generator=generator).to(device))
        return lower + offset * self.cell_size

    @staticmethod
    def _lattice(n: int, axis: Tensor) -> Tensor:
        """All (n^3, 3) points of ``axis`` x ``axis`` x ``axis``, index [i, j, k] = (x_i, y_j, z_k)."""
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def dilate(bits: Tensor, cells: int) -> Tensor:
    """``bits`` (R, R, R) grown by ``cells`` in every direction (a cube-shaped structuring element)."""
    if cells <= 0:
        return bits
    grown = F.max_pool3d(bits[None, None].float(), kernel_size=2 * cells + 1, stride=1, padding=cells)
    return grown[0, 0] > 0


def _chunked(density: Callable[[Tensor], Tensor], points: Tensor, chunk: int) -> Tensor:
    return torch.cat([density(points[s:s + chunk]).reshape(-1) for s in range(0, points.shape[0], chunk)])
