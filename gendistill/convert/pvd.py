"""Progressive volume distillation (PVD, Fang et al. 2023, "One is All: Bridging the Gap Between Neural Radiance
Fields Architectures with Progressive Volume Distillation"; PVD-AL's focus): a student field learns a teacher's
volume by querying it on the fly, block by block from shallow to deep. A recipe for the one trainer.

Each step draws points in the cube (half uniform, half along random rays of the given cameras) and rays of
those cameras, asks the teacher about them without gradients, and adds up the losses of the stages that
have started (fractions of the run, in this order):

1. **features**: a learned linear map of the student's encoder output matches the teacher's (normalised)
   encoder output -- only where the student's encoder has parameters (a positional-encoding MLP has none);
2. **density**: ``log1p`` of the densities, both clipped at ``density_clip`` (PVD's clipping: the huge
   densities inside opaque objects carry no information for rendering and blow up the loss);
3. **colour**: squared error of rgb at the points, weighted by the teacher's opacity there (colour in empty
   space is meaningless);
4. **rays**: squared error of rendered rgb and alpha along the cameras' rays.

Where the teacher's answers come from: PVD queries the teacher on the fly, and ``bank.enabled: false`` still
does. By default they come from a :class:`~gendistill.convert.teacher_bank.TeacherBank` instead, a cache of
the teacher's answers at points drawn mostly where it has density (its occupancy grid), refreshed every
``bank.refresh_every`` steps by PVD-AL's active selection (the entries the student gets most wrong stay);
the teacher is then queried a few times per run instead of every step.

With ``focus`` (PVD-AL), a share of every batch replays the points and rays the student got most wrong: on the
fly, those of the previous step; with the bank, the entries with the largest recorded error. That memory, and
the bank, are checkpointed (``extra_state``), so a resumed run replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field

import torch
from torch import Tensor, nn

from gendistill.convert.fit import field_groups
from gendistill.convert.teacher_bank import BankConfig, PointTargets, TeacherBank, ask_teacher, render_occupied
from gendistill.errors import check_range
from gendistill.recipe import Loss, ParamGroup, Phase, Update
from gendistill.render.cameras import Cameras
from gendistill.render.nerf import RadianceField, camera_rays, intersect_cube, render_rays

STUDENT_PHASE = "student"
"""The phase name of a distillation (the key of its optimizer settings)."""
PROJECTION_LR = 1e-2
"""Learning rate of the features stage's linear projection (not scaled by ``lr_scale``)."""


@dataclass
class StageStarts:
    """When each stage's loss joins, as a fraction of the run."""

    features: float = 0.0
    """Encoder-output matching (skipped for students whose encoder has no parameters)."""
    density: float = 0.02
    """Clipped log-density matching at points."""
    colour: float = 0.05
    """Opacity-weighted colour matching at points."""
    rays: float = 0.1
    """Rendered colour and opacity along rays."""


@dataclass
class PVDConfig:
    """How to distil a field into another."""

    steps: int = 600
    """Optimizer steps."""
    points_per_step: int = 2048
    """Points where the teacher is queried each step."""
    rays_per_step: int = 512
    """Rays rendered by both fields each step once the rays stage has started (the rays decide the last dB: on a
    64 px torus, 512 a step from an 8192-ray bank instead of 128 from 2048 took a TensoRF-VM student's best
    held-out PSNR in 600 steps from 33.2 to 33.8 dB)."""
    num_samples: int = 48
    """Samples per ray."""
    feature_weight: float = 0.1
    """Weight of the features loss (it only guides the encoder; the later stages decide what renders)."""
    density_clip: float = 50.0
    """Densities are clipped to [0, this] before they are compared."""
    stages: StageStarts = dataclass_field(default_factory=StageStarts)
    """When each stage starts."""
    focus: bool = False
    """PVD-AL: replay the points and rays with the largest student error (on the fly: the last step's worst; with
    the bank: the bank entries with the largest recorded error)."""
    bank: BankConfig = dataclass_field(default_factory=BankConfig)
    """The cache of the teacher's answers and its refresh by active selection (on by default)."""
    focus_fraction: float = 0.5
    """Share of each batch that replays the worst points / rays of the last step when focus is on."""
    lr_scale: float = 2.0
    """Multiplies every suggested learning rate of the student (the teacher's answers are noise-free, so
    bigger steps than training on photos pay off: +3 to +8 dB after 60 steps on the tests' scene)."""
    lr_final_ratio: float = 0.1
    """Learning rates decay exponentially to this fraction of their start by the last step."""

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 1, None)
        check_range("points_per_step", self.points_per_step, 2, None)
        check_range("rays_per_step", self.rays_per_step, 1, None)
        check_range("num_samples", self.num_samples, 2, None)
        check_range("density_clip", self.density_clip, 1e-3, None)
        check_range("focus_fraction", self.focus_fraction, 0.0, 0.9)
        for name in ("features", "density", "colour", "rays"):
            check_range(f"stages.{name}", getattr(self.stages, name), 0.0, 1.0)


@dataclass(frozen=True)
class PVDBatch:
    """Random queries of one step (the focus replay is mixed in by the recipe)."""

    points: Tensor
    """(P, 3) query points in the cube; with the bank, (P,) indices of bank points."""
    rays: Tensor
    """(R,) indices into the cameras' rays; with the bank, indices of bank rays."""
    from_bank: bool = False
    """The indices point into the teacher bank."""


class FeatureProjection(nn.Module):
    """The features stage's learned map from student to teacher encoder outputs, with the teacher's per-channel
    scale (its standard deviation over uniform points) that normalises the target."""

    def __init__(self, student_dim: int, teacher_dim: int, scale: Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(student_dim, teacher_dim)
        self.register_buffer("scale", scale.clone())

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


class PVDRecipe:
    """Distils ``teacher`` into ``student`` with rays of ``cameras`` composited over ``background``; one phase,
    ``student`` (the student's groups plus the projection). ``generator`` only initialises the projection and
    measures the teacher's feature scale; the training draws come from the trainer."""

    def __init__(self, teacher: RadianceField, student: RadianceField, cameras: Cameras, background: Tensor,
                 config: PVDConfig, generator: torch.Generator) -> None:
        self.teacher, self.student, self.config, self.background = teacher, student, config, background
        self.origins, self.directions = (r.reshape(-1, 3) for r in camera_rays(cameras))
        self.bound = min(teacher.config.bound, student.config.bound)
        teacher.requires_grad_(False)
        self.use_features = any(p.requires_grad for p in student.encoder.parameters())
        self.projection = self._projection(generator) if self.use_features else None
        self.focus_points = torch.zeros(0, 3)
        self.focus_rays = torch.zeros(0, dtype=torch.long)
        self.bank = (TeacherBank(teacher, self.origins, self.directions, background, config.bank, config.num_samples,
                                 self.use_features, generator) if config.bank.enabled else None)
        self.refreshed_at = torch.zeros((), dtype=torch.long)

    def _projection(self, generator: torch.Generator) -> FeatureProjection:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.no_grad():
            scale = self.teacher.features(_uniform_points(4096, self.bound, generator)).std(dim=0).clamp_min(1e-6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FeatureProjection(self.student.feature_dim, self.teacher.feature_dim, scale)

    # --- the recipe protocol --------------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        groups = field_groups(self.student, self.config.lr_scale, self.config.lr_final_ratio)
        if self.projection is not None:
            params = list(self.projection.parameters())
            groups += (ParamGroup("projection", params, PROJECTION_LR, self.config.lr_final_ratio),)
        return [Phase(STUDENT_PHASE, groups=groups)]

    def modules(self) -> dict[str, nn.Module]:
        """The student and the projection (the teacher is fixed and reloaded by the caller, not checkpointed)."""
        return {"student": self.student, **({"projection": self.projection} if self.projection else {})}

    def ema_module(self) -> str | None:
        return None

    def extra_state(self) -> dict[str, Tensor]:
        """PVD-AL's memory of the last step's worst points and rays, and the teacher bank."""
        bank = {**self.bank.state(), "bank_refreshed_at": self.refreshed_at} if self.bank is not None else {}
        return {"focus_points": self.focus_points, "focus_rays": self.focus_rays, **bank}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.focus_points = state["focus_points"].float()
        self.focus_rays = state["focus_rays"].long()
        if self.bank is not None:
            self.bank.load_state(state)
            self.refreshed_at = state["bank_refreshed_at"].long()

    def after_update(self, update: Update) -> None:
        """Nothing to do after a step."""

    # --- batches and losses ---------------------------------------------------------------------------

    def batch(self, step: int, generator: torch.Generator) -> PVDBatch:
        """With the bank: indices of bank points and rays (the bank is refreshed first when due). Without: fresh
        points (half uniform, half on the cameras' rays, shuffled) and ray indices of one step."""
        n = self.config.points_per_step
        if self.bank is not None:
            self._refresh_if_due(step, generator)
            replay = self.config.focus_fraction if self.config.focus else 0.0
            return PVDBatch(*self.bank.draw(n, self.config.rays_per_step, generator, replay), from_bank=True)
        points = torch.cat([_uniform_points(n // 2, self.bound, generator), self._ray_points(n - n // 2, generator)])
        points = points[torch.randperm(n, generator=generator)]
        rays = torch.randint(0, self.origins.shape[0], (self.config.rays_per_step,), generator=generator)
        return PVDBatch(points, rays)

    def _refresh_if_due(self, step: int, generator: torch.Generator) -> None:
        every = self.config.bank.refresh_every
        if every and step > 0 and step % every == 0 and int(self.refreshed_at) != step:
            self.bank.refresh(generator)
            self.refreshed_at = torch.tensor(step)

    def _ray_points(self, n: int, generator: torch.Generator) -> Tensor:
        rays = torch.randint(0, self.origins.shape[0], (n,), generator=generator)
        o, d = self.origins[rays], self.directions[rays]
        near, far = intersect_cube(o, d, self.bound)
        t = near + (far - near) * torch.rand(n, generator=generator)
        return o + t[:, None] * d

    def loss(self, batch: PVDBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        """The sum of the started stages' losses at ``step``; terms: each stage's loss."""
        losses = self.stage_losses(batch, step / self.config.steps, generator)
        return Loss(sum(losses.values()), {k: float(v.detach().item()) for k, v in losses.items()})

    def stage_losses(self, batch: PVDBatch, progress: float, generator: torch.Generator) -> dict[str, Tensor]:
        """The losses of the stages that have started at ``progress`` in [0, 1]."""
        starts, losses = self.config.stages, {}
        if not self.use_features:  # the first stage that exists starts at once
            progress = max(progress, starts.density)
        if batch.from_bank:
            targets = self.bank.point_targets(batch.points)
        else:
            targets = self.teacher_answers(self._mix(batch.points, self.focus_points))
        point_losses, point_error = self.point_losses(targets, progress)
        losses.update(point_losses)
        if self.bank is not None and batch.from_bank:
            self.bank.record(batch.points, point_error)
        elif self.config.focus:
            self.focus_points = _worst(targets.points, point_error, int(self.config.focus_fraction * len(point_error)))
        if progress >= starts.rays:
            losses["rays"] = self._ray_loss(batch, generator)
        return losses

    def teacher_answers(self, points: Tensor) -> PointTargets:
        """The teacher's answers at ``points``, queried now (PVD's on-the-fly route)."""
        return ask_teacher(self.teacher, points, self.use_features)

    def point_losses(self, targets: PointTargets, progress: float) -> tuple[dict[str, Tensor], Tensor]:
        """The started point stages' losses against the teacher's answers, and the per-point error (P,) that
        PVD-AL's selection ranks."""
        cfg, starts, losses = self.config, self.config.stages, {}
        points, t_density, t_rgb = targets.points, targets.density, targets.rgb
        point_error = torch.zeros(points.shape[0])
        if self.use_features and progress >= starts.features:
            target = targets.features / self.projection.scale
            err = (self.projection(self.student.features(points)) - target).square().mean(-1)
            losses["features"] = cfg.feature_weight * err.mean()
            point_error = point_error + err.detach()
        if progress >= starts.density or progress >= starts.colour:
            s_density, s_rgb = self.student(points)
            if progress >= starts.density:
                clip = cfg.density_clip
                err = (torch.log1p(s_density.clamp(max=clip)) - torch.log1p(t_density.clamp(max=clip))).square()
                losses["density"] = err.mean()
                point_error = point_error + err.detach()
            if progress >= starts.colour:
                weight = 1.0 - torch.exp(-t_density * (2.0 * self.bound / cfg.num_samples))
                err = weight * (s_rgb - t_rgb).square().mean(-1)
                losses["colour"] = err.sum() / weight.sum().clamp_min(1e-6)
                point_error = point_error + err.detach()
        return losses, point_error

    def _ray_loss(self, batch: PVDBatch, generator: torch.Generator) -> Tensor:
        samples = self.config.num_samples
        if batch.from_bank:
            o, d, t_rgb, t_alpha = self.bank.ray_targets(batch.rays)
        else:
            rays = self._mix(batch.rays, self.focus_rays)
            o, d = self.origins[rays], self.directions[rays]
            with torch.no_grad():
                t = render_rays(self.teacher, o, d, samples, generator=generator, background=self.background)
            t_rgb, t_alpha = t.rgb, t.alpha
        s_rgb, s_alpha = self._student_rays(o, d, batch.from_bank, generator)
        err = (s_rgb - t_rgb).square().mean(-1) + (s_alpha - t_alpha).square()
        if batch.from_bank:
            self.bank.record(None, None, batch.rays, err)
        elif self.config.focus:
            self.focus_rays = _worst(rays, err, int(self.config.focus_fraction * rays.shape[0]))
        return err.mean()

    def _student_rays(self, o: Tensor, d: Tensor, from_bank: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The student's rgb and alpha along rays (only at occupied samples when the bank says so)."""
        if from_bank and self.config.bank.student_rays_skip_empty:
            return render_occupied(self.student, o, d, self.config.num_samples, self.background, self.bank.grid,
                                   generator)
        s = render_rays(self.student, o, d, self.config.num_samples, generator=generator, background=self.background)
        return s.rgb, s.alpha

    def _mix(self, fresh: Tensor, remembered: Tensor) -> Tensor:
        """``fresh`` with its tail replaced by up to ``focus_fraction`` of the remembered items (PVD-AL)."""
        if not self.config.focus or remembered.shape[0] == 0:
            return fresh
        k = min(int(self.config.focus_fraction * fresh.shape[0]), remembered.shape[0])
        return torch.cat([fresh[: fresh.shape[0] - k], remembered[:k].to(fresh)])


def _uniform_points(n: int, bound: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(n, 3, generator=generator) * 2 - 1) * bound


def _worst(items: Tensor, errors: Tensor, k: int) -> Tensor:
    """The ``k`` items with the largest errors (detached copies)."""
    return items[errors.detach().topk(min(k, errors.shape[0])).indices].detach().clone()
