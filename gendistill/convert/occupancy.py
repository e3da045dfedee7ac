"""Where a teacher field has density: a boolean grid over its cube, and points drawn only inside it.

PVD (Fang et al., AAAI 2023, "One is All: Bridging the Gap Between Neural Radiance Fields Architectures with
Progressive Volume Distillation") samples the teacher along rays and in the volume; most of a small object's
cube is empty, so uniform samples spend most teacher and student queries where both fields should say "no
density". Instant-NGP's occupancy grid is the usual cure; here it is built once from the teacher: each cell
is probed at a few jittered points, and it is occupied when any probe's opacity over one cell length exceeds
``min_opacity``. :meth:`OccupancyGrid.sample` then draws points uniformly inside occupied cells only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.errors import check_range


@dataclass(frozen=True)
class OccupancyGrid:
    """A (R, R, R) boolean grid over the cube ``[-bound, bound]^3``, indexed ``[ix, iy, iz]``."""

    occupied: Tensor
    """(R, R, R) bool: the cell has density."""
    bound: float
    """Half the side of the cube the grid covers."""

    @property
    def resolution(self) -> int:
        return self.occupied.shape[0]

    @property
    def cell(self) -> float:
        """The side of one cell."""
        return 2.0 * self.bound / self.resolution

    @property
    def occupied_share(self) -> float:
        """Fraction of the cube's cells that are occupied."""
        return float(self.occupied.float().mean())

    def cell_index(self, points: Tensor) -> Tensor:
        """Integer cell coordinates (N, 3) of world points (N, 3); points outside are clamped onto the grid."""
        index = torch.floor((points + self.bound) / self.cell).long()
        return index.clamp(0, self.resolution - 1)

    def contains(self, points: Tensor) -> Tensor:
        """(N,) bool: the point lies inside the cube and in an occupied cell."""
        inside = (points.abs() <= self.bound).all(dim=-1)
        i = self.cell_index(points)
        return inside & self.occupied[i[:, 0], i[:, 1], i[:, 2]]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` points (n, 3) uniform over the occupied cells (uniform over the cube when none is occupied)."""
        cells = self.occupied.nonzero()
        if cells.shape[0] == 0:
            return (torch.rand(n, 3, generator=generator) * 2 - 1) * self.bound
        pick = cells[torch.randint(0, cells.shape[0], (n,), generator=generator)]
        offset = torch.rand(n, 3, generator=generator)
        return -self.bound + (pick.float() + offset) * self.cell


def teacher_occupancy(teacher, resolution: int, generator: torch.Generator, *, min_opacity: float = 1e-3,
                      probes: int = 2, dilate: int = 1, chunk: int = 65536) -> OccupancyGrid:
    """The occupancy grid of ``teacher`` (anything with ``density(x)`` and ``config.bound``): a cell is occupied
    when one of its ``probes`` jittered points has ``1 - exp(-density * cell) > min_opacity``; ``dilate`` grows
    the occupied set by that many cells (probes can miss a thin shell)."""
    check_range("resolution", resolution, 2, None)
    check_range("probes", probes, 1, None)
    bound = float(teacher.config.bound)
    cell = 2.0 * bound / resolution
    corners = torch.stack(torch.meshgrid(*[torch.arange(resolution)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
    opacity = torch.zeros(corners.shape[0])
    with torch.no_grad():
        for _ in range(probes):
            points = -bound + (corners.float() + torch.rand(corners.shape, generator=generator)) * cell
            density = torch.cat([teacher.density(points[i:i + chunk]) for i in range(0, points.shape[0], chunk)])
            opacity = torch.maximum(opacity, 1.0 - torch.exp(-density.float() * cell))
    occupied = (opacity > min_opacity).reshape(resolution, resolution, resolution)
    return OccupancyGrid(_dilate(occupied, dilate), bound)


def _dilate(occupied: Tensor, cells: int) -> Tensor:
    """Grow a boolean grid by ``cells`` in every direction (a max-pool of width 2 * cells + 1)."""
    if cells <= 0:
        return occupied
    grown = torch.nn.functional.max_pool3d(occupied[None, None].float(), 2 * cells + 1, stride=1, padding=cells)
    return grown[0, 0] > 0
