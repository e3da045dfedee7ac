"""A cache of the teacher's answers for progressive volume distillation, refreshed by active selection.

PVD (Fang et al., AAAI 2023, "One is All: Bridging the Gap Between Neural Radiance Fields Architectures with
Progressive Volume Distillation") queries the teacher **on the fly**: every step draws fresh points and rays
and asks the teacher about them. With a hash-grid teacher that query costs about four times the student's own
forward and backward pass per point on a CPU, so most of a PVD step was spent on the teacher. This bank is a
**cache** instead: the teacher answers tens of thousands of points
(density, colour and encoder features) and rays (rendered colour and opacity) once, without gradients, and
each step reads a random subset of them.

The bank does not stay fixed: PVD-AL (Fang et al. 2023, "Progressive Volume Distillation with Active
Learning") spends its effort where the student is still wrong. Every time an entry is read, the student's
error there is recorded; every ``refresh_every`` steps the bank keeps the ``keep_hardest`` share of entries
with the largest recorded error and replaces the rest by fresh draws that the teacher answers then.

Fresh points come mostly from the teacher's occupancy grid (:mod:`gendistill.convert.occupancy`: only where the
teacher has density), the rest uniformly from the cube, so the student still learns that empty space is
empty. Cached rays are rendered by the teacher at the bins' midpoints, skipping samples in empty cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.convert.occupancy import OccupancyGrid, teacher_occupancy
from gendistill.errors import check_range
from gendistill.render.nerf import intersect_cube
from gendistill.render.nerf.volume import composite, sample_points, stratified_bins


@dataclass
class BankConfig:
    """The teacher's answer cache and its refresh (PVD-AL's active selection)."""

    enabled: bool = True
    """Read the teacher's answers from the bank (False: query the teacher on the fly every step, as PVD does)."""
    points: int = 65536
    """Points the bank holds (a small bank is memorised: a 4096-point bank cost a hash-grid student 8 dB
    against the teacher in the tests' 60-step run)."""
    rays: int = 8192
    """Rays the bank holds."""
    refresh_every: int = 50
    """Steps between refreshes (0: never refresh)."""
    keep_hardest: float = 0.5
    """Share of entries with the largest student error kept at a refresh; the rest are drawn afresh."""
    occupied_share: float = 0.75
    """Share of fresh points drawn inside the teacher's occupied cells (the rest: uniform in the cube)."""
    occupancy_resolution: int = 32
    """Cells per axis of the teacher's occupancy grid."""
    min_opacity: float = 1e-3
    """A cell is occupied when the teacher's opacity over one cell length exceeds this somewhere in it."""
    occupancy_dilate: int = 1
    """Grow the occupied cells by this many (the probes can miss a thin shell of density)."""
    student_rays_skip_empty: bool = True
    """The student renders its rays with the same bins but only at samples in occupied cells (density 0
    elsewhere); its empty space is taught by the uniform points instead of by every ray sample."""

    def __post_init__(self) -> None:
        check_range("bank.points", self.points, 2, None)
        check_range("bank.rays", self.rays, 1, None)
        check_range("bank.refresh_every", self.refresh_every, 0, None)
        check_range("bank.keep_hardest", self.keep_hardest, 0.0, 1.0)
        check_range("bank.occupied_share", self.occupied_share, 0.0, 1.0)
        check_range("bank.occupancy_resolution", self.occupancy_resolution, 2, None)
        check_range("bank.min_opacity", self.min_opacity, 0.0, 1.0)
        check_range("bank.occupancy_dilate", self.occupancy_dilate, 0, None)


@dataclass(frozen=True)
class PointTargets:
    """The teacher's answers at points."""

    points: Tensor
    """(P, 3) world positions."""
    density: Tensor
    """(P,) teacher density."""
    rgb: Tensor
    """(P, 3) teacher colour."""
    features: Tensor | None
    """(P, F) teacher encoder output, or None when the student has no encoder to match."""


def ask_teacher(teacher, points: Tensor, with_features: bool) -> PointTargets:
    """The teacher's answers at ``points``, without gradients (the one function both the bank and an on-the-fly
    step use, so the two give the same targets for the same points)."""
    with torch.no_grad():
        density, rgb = teacher(points)
        features = teacher.features(points) if with_features else None
    return PointTargets(points, density, rgb, features)


def render_teacher_rays(teacher, origins: Tensor, directions: Tensor, num_samples: int, background: Tensor,
                        grid: OccupancyGrid | None = None) -> tuple[Tensor, Tensor]:
    """The teacher's deterministic rgb (N, 3) and alpha (N,) along rays (bins' midpoints, as the benchmark's
    evaluation renders), querying it only at samples inside ``grid``'s occupied cells (density 0 elsewhere)."""
    with torch.no_grad():
        return render_occupied(teacher, origins, directions, num_samples, background, grid)


def render_occupied(field, origins: Tensor, directions: Tensor, num_samples: int, background: Tensor,
                    grid: OccupancyGrid | None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """rgb (N, 3) and alpha (N,) of rays through ``field`` with the bins of
    :func:`~gendistill.render.nerf.render_rays` (jittered with a generator, midpoints without), evaluating the
    field only at samples inside ``grid``'s occupied cells and taking density 0 at the others (every sample
    when ``grid`` is None). Differentiable in the field's parameters."""
    near, far = intersect_cube(origins, directions, field.config.bound)
    edges = stratified_bins(near, far, num_samples)
    t = sample_points(edges, generator)
    n, s = t.shape
    positions = (origins[:, None, :] + t[..., None] * directions[:, None, :]).reshape(-1, 3)
    if grid is None:
        density, rgb = field(positions)
    else:
        keep = grid.contains(positions).nonzero().squeeze(-1)
        kept_density, kept_rgb = field(positions[keep])
        density = torch.zeros(n * s, dtype=kept_density.dtype).index_put((keep,), kept_density)
        rgb = torch.zeros(n * s, 3, dtype=kept_rgb.dtype).index_put((keep,), kept_rgb)
    deltas = (edges[:, 1:] - edges[:, :-1]) * directions.norm(dim=-1, keepdim=True)
    weights, colour = composite(density.view(n, s), rgb.view(n, s, 3), deltas)
    alpha = weights.sum(dim=-1)
    return colour + (1.0 - alpha)[:, None] * background.to(colour), alpha


class TeacherBank:
    """Cached teacher answers at points and along rays of the cameras (``origins``, ``directions``: every
    pixel's ray, (M, 3)); see the module docstring."""

    def __init__(self, teacher, origins: Tensor, directions: Tensor, background: Tensor, config: BankConfig,
                 num_samples: int, with_features: bool, generator: torch.Generator) -> None:
        self.teacher, self.config, self.with_features = teacher, config, with_features
        self.origins, self.directions, self.background = origins, directions, background
        self.num_samples = num_samples
        self.grid = teacher_occupancy(teacher, config.occupancy_resolution, generator, min_opacity=config.min_opacity,
                                      dilate=config.occupancy_dilate)
        self.points = self._fresh_points(config.points, generator)
        self.point_error = torch.zeros(config.points)
        self.rays, self.ray_rgb, self.ray_alpha = self._fresh_rays(config.rays, generator)
        self.ray_error = torch.zeros(config.rays)

    # --- reading ----------------------------------------------------------------------------------------

    def draw(self, n_points: int, n_rays: int, generator: torch.Generator,
             hardest_share: float = 0.0) -> tuple[Tensor, Tensor]:
        """Indices of ``n_points`` bank points and ``n_rays`` bank rays: the ``hardest_share`` of each with the
        largest recorded errors (PVD-AL's replay), the rest random (with replacement)."""
        return (_draw(self.point_error, n_points, hardest_share, generator),
                _draw(self.ray_error, n_rays, hardest_share, generator))

    def point_targets(self, index: Tensor) -> PointTargets:
        """The cached answers at bank points ``index``."""
        p = self.points
        return PointTargets(p.points[index], p.density[index], p.rgb[index],
                            p.features[index] if p.features is not None else None)

    def ray_targets(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Origins, directions, and the teacher's cached rgb and alpha of bank rays ``index``."""
        rays = self.rays[index]
        return self.origins[rays], self.directions[rays], self.ray_rgb[index], self.ray_alpha[index]

    def record(self, point_index: Tensor | None, point_error: Tensor | None, ray_index: Tensor | None = None,
               ray_error: Tensor | None = None) -> None:
        """Remember the student's latest error at the entries it just read (PVD-AL's selection criterion)."""
        if point_index is not None and point_error is not None:
            self.point_error[point_index] = point_error.detach().float()
        if ray_index is not None and ray_error is not None:
            self.ray_error[ray_index] = ray_error.detach().float()

    # --- refreshing ----------------------------------------------------------------------------------

    def refresh(self, generator: torch.Generator) -> None:
        """Keep the hardest ``keep_hardest`` share of points and rays, draw and answer the rest afresh."""
        keep = _hardest(self.point_error, self.config.keep_hardest)
        fresh = self._fresh_points(self.config.points - keep.shape[0], generator)
        self.points = _cat_targets(self.point_targets(keep), fresh)
        self.point_error = torch.cat([self.point_error[keep], torch.zeros(fresh.points.shape[0])])
        keep = _hardest(self.ray_error, self.config.keep_hardest)
        rays, rgb, alpha = self._fresh_rays(self.config.rays - keep.shape[0], generator)
        self.rays = torch.cat([self.rays[keep], rays])
        self.ray_rgb, self.ray_alpha = torch.cat([self.ray_rgb[keep], rgb]), torch.cat([self.ray_alpha[keep], alpha])
        self.ray_error = torch.cat([self.ray_error[keep], torch.zeros(rays.shape[0])])

    def _fresh_points(self, n: int, generator: torch.Generator) -> PointTargets:
        n_occupied = round(n * self.config.occupied_share)
        uniform = (torch.rand(n - n_occupied, 3, generator=generator) * 2 - 1) * self.grid.bound
        points = torch.cat([self.grid.sample(n_occupied, generator), uniform])
        return ask_teacher(self.teacher, points, self.with_features)

    def _fresh_rays(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        rays = torch.randint(0, self.origins.shape[0], (n,), generator=generator)
        rgb, alpha = render_teacher_rays(self.teacher, self.origins[rays], self.directions[rays], self.num_samples,
                                         self.background, self.grid)
        return rays, rgb, alpha

    # --- checkpointing --------------------------------------------------------------------------------

    def state(self) -> dict[str, Tensor]:
        """Everything a refresh changes (a resumed run must read the same bank)."""
        p = self.points
        state = {"bank_points": p.points, "bank_density": p.density, "bank_rgb": p.rgb,
                 "bank_point_error": self.point_error, "bank_rays": self.rays, "bank_ray_rgb": self.ray_rgb,
                 "bank_ray_alpha": self.ray_alpha, "bank_ray_error": self.ray_error}
        if p.features is not None:
            state["bank_features"] = p.features
        return state

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.points = PointTargets(state["bank_points"], state["bank_density"], state["bank_rgb"],
                                   state.get("bank_features"))
        self.point_error, self.rays = state["bank_point_error"], state["bank_rays"].long()
        self.ray_rgb, self.ray_alpha = state["bank_ray_rgb"], state["bank_ray_alpha"]
        self.ray_error = state["bank_ray_error"]


def _draw(errors: Tensor, n: int, hardest_share: float, generator: torch.Generator) -> Tensor:
    k = min(int(hardest_share * n), errors.shape[0])
    random = torch.randint(0, errors.shape[0], (n - k,), generator=generator)
    return torch.cat([errors.topk(k).indices, random]) if k else random


def _hardest(errors: Tensor, share: float) -> Tensor:
    """Indices of the ``share`` of entries with the largest errors."""
    return errors.topk(int(share * errors.shape[0])).indices


def _cat_targets(a: PointTargets, b: PointTargets) -> PointTargets:
    features = torch.cat([a.features, b.features]) if a.features is not None else None
    return PointTargets(torch.cat([a.points, b.points]), torch.cat([a.density, b.density]),
                        torch.cat([a.rgb, b.rgb]), features)
