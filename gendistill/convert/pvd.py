"""Progressive volume distillation (PVD, "One is All"; PVD-AL's focus): a student field learns a teacher's
volume by querying it on the fly, block by block from shallow to deep.

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

With ``focus`` (PVD-AL), a share of every batch replays the points and rays the student got most wrong in
the previous step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field as dataclass_field
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gendistill.convert.fit import exponential_decay, make_optimizer
from gendistill.errors import check_range
from gendistill.render.cameras import Cameras
from gendistill.render.nerf import RadianceField, camera_rays, intersect_cube, render_rays


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
    """Adam steps."""
    points_per_step: int = 2048
    """Points where the teacher is queried each step."""
    rays_per_step: int = 128
    """Rays rendered by both fields each step once the rays stage has started."""
    num_samples: int = 48
    """Samples per ray."""
    feature_weight: float = 0.1
    """Weight of the features loss (it only guides the encoder; the later stages decide what renders)."""
    density_clip: float = 50.0
    """Densities are clipped to [0, this] before they are compared."""
    stages: StageStarts = dataclass_field(default_factory=StageStarts)
    """When each stage starts."""
    focus: bool = False
    """PVD-AL: replay the points and rays with the largest student error."""
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
class PVDResult:
    """What a distillation did."""

    steps: int
    """Steps run (fewer than configured when on_step stopped the run)."""
    seconds: float
    """Wall-clock of the loop."""
    final_losses: dict
    """Each active stage's loss at the last step."""


class _Focus:
    """PVD-AL's memory: the worst points and rays of the last step, replayed in the next one."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.points: Tensor | None = None
        self.rays: Tensor | None = None

    def mix(self, fresh: Tensor, remembered: Tensor | None) -> Tensor:
        if remembered is None or self.fraction == 0:
            return fresh
        k = min(int(self.fraction * fresh.shape[0]), remembered.shape[0])
        return torch.cat([fresh[: fresh.shape[0] - k], remembered[:k]])

    @staticmethod
    def worst(items: Tensor, errors: Tensor, k: int) -> Tensor:
        return items[errors.detach().topk(min(k, errors.shape[0])).indices]


class Distiller:
    """Runs PVD from ``teacher`` into ``student`` with rays of ``cameras`` composited over ``background``."""

    def __init__(self, teacher: RadianceField, student: RadianceField, cameras: Cameras, background: Tensor,
                 config: PVDConfig, generator: torch.Generator) -> None:
        self.teacher, self.student, self.config, self.generator = teacher, student, config, generator
        self.background = background
        self.origins, self.directions = (r.reshape(-1, 3) for r in camera_rays(cameras))
        self.bound = min(teacher.config.bound, student.config.bound)
        teacher.requires_grad_(False)
        self.use_features = any(p.requires_grad for p in student.encoder.parameters())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            self.projection = nn.Linear(student.feature_dim, teacher.feature_dim)
        self.feature_scale = self._teacher_feature_scale() if self.use_features else None
        self.optimizer = make_optimizer(student, config.lr_scale)
        if self.use_features:
            self.optimizer.add_param_group({"params": list(self.projection.parameters()), "lr": 1e-2, "name": "proj"})
        self.scheduler = exponential_decay(self.optimizer, config.steps, config.lr_final_ratio)
        self.focus = _Focus(config.focus_fraction) if config.focus else None

    def _teacher_feature_scale(self) -> Tensor:
        with torch.no_grad():
            f = self.teacher.features(self._uniform_points(4096))
        return f.std(dim=0).clamp_min(1e-6)

    def _uniform_points(self, n: int) -> Tensor:
        return (torch.rand(n, 3, generator=self.generator) * 2 - 1) * self.bound

    def _ray_points(self, n: int) -> Tensor:
        rays = torch.randint(0, self.origins.shape[0], (n,), generator=self.generator)
        o, d = self.origins[rays], self.directions[rays]
        near, far = intersect_cube(o, d, self.bound)
        t = near + (far - near) * torch.rand(n, generator=self.generator)
        return o + t[:, None] * d

    def sample_points(self) -> Tensor:
        """This step's query points, with the remembered worst ones mixed in under focus."""
        n = self.config.points_per_step
        points = torch.cat([self._uniform_points(n // 2), self._ray_points(n - n // 2)])
        points = points[torch.randperm(n, generator=self.generator)]
        return self.focus.mix(points, self.focus.points) if self.focus else points

    def sample_rays(self) -> Tensor:
        rays = torch.randint(0, self.origins.shape[0], (self.config.rays_per_step,), generator=self.generator)
        return self.focus.mix(rays, self.focus.rays) if self.focus else rays

    def step_losses(self, progress: float) -> dict[str, Tensor]:
        """The losses of the stages that have started at ``progress`` in [0, 1]."""
        cfg, starts, losses = self.config, self.config.stages, {}
        if not self.use_features:  # the first stage that exists starts at once
            progress = max(progress, starts.density)
        points = self.sample_points()
        with torch.no_grad():
            t_density, t_rgb = self.teacher(points)
        point_error = torch.zeros(points.shape[0])
        if self.use_features and progress >= starts.features:
            with torch.no_grad():
                target = self.teacher.features(points) / self.feature_scale
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
        if self.focus:
            self.focus.points = _Focus.worst(points, point_error, int(cfg.focus_fraction * points.shape[0]))
        if progress >= starts.rays:
            losses["rays"] = self._ray_loss()
        return losses

    def _ray_loss(self) -> Tensor:
        rays = self.sample_rays()
        o, d = self.origins[rays], self.directions[rays]
        with torch.no_grad():
            t = render_rays(self.teacher, o, d, self.config.num_samples, generator=self.generator,
                            background=self.background)
        s = render_rays(self.student, o, d, self.config.num_samples, generator=self.generator,
                        background=self.background)
        err = (s.rgb - t.rgb).square().mean(-1) + (s.alpha - t.alpha).square()
        if self.focus:
            self.focus.rays = _Focus.worst(rays, err, int(self.config.focus_fraction * rays.shape[0]))
        return err.mean()

    def run(self, progress: bool = True, on_step: Callable[[int, RadianceField], bool | None] | None = None
            ) -> PVDResult:
        """Distil for ``config.steps`` steps (or until ``on_step`` returns True)."""
        steps = self.config.steps
        bar = tqdm(range(steps), desc=f"pvd -> {self.student.config.architecture}", disable=not progress,
                   mininterval=1.0, dynamic_ncols=True)
        start, losses, step = time.perf_counter(), {}, 0
        for step in bar:
            losses = self.step_losses(step / steps)
            total = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.scheduler.step()
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()}, refresh=False)
            if on_step is not None and on_step(step + 1, self.student):
                break
        return PVDResult(steps=step + 1, seconds=time.perf_counter() - start,
                         final_losses={k: float(v.item()) for k, v in losses.items()})


def distil_field(teacher: RadianceField, student: RadianceField, cameras: Cameras, background: Tensor,
                 config: PVDConfig, generator: torch.Generator, progress: bool = True,
                 on_step: Callable[[int, RadianceField], bool | None] | None = None) -> PVDResult:
    """Distil ``teacher`` into ``student`` in place (see the module docstring)."""
    return Distiller(teacher, student, cameras, background, config, generator).run(progress, on_step)
