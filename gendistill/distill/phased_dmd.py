"""Phased DMD: few-step distribution matching with one expert per SNR phase (Fan et al. 2025, "Phased DMD: Few-step
Distribution Matching Distillation via Score Matching within Subintervals", arXiv 2510.27684; reference training
code: ModelTC/LightX2V, ``lightx2v_train/lightx2v_train/trainers/phased_dmd/``).

The student takes K deterministic DDIM steps on the trailing K-step grid (what the exported ``DDIMScheduler``
with ``timestep_spacing="trailing"`` visits). ``phase_boundaries`` split the K steps into phases; phase k runs
steps ``[start_k, end_k)`` with its own expert and ends at ``sigma_s = sigmas[end_k]`` (0 for the last phase).
Phases train one after the other, ``steps_per_phase`` trainer steps each, from the high-noise phase down: the
experts of earlier phases are then frozen (no gradient ever reaches them again) and run without gradient to make
the inputs of the active one. Each phase has its own fake score; per trainer step, for the active phase k:

- ``fake_score`` (``fake_updates`` times): the experts run down to ``sigma_s`` (no gradient); the fake score
  learns by *score matching within the subinterval* (``diffusion/subinterval.py``): ``x_t = x_s + d * eps`` with
  ``d = sqrt(sigma_t^2 - sigma_s^2)`` and target ``x_s - sigma_s^2 / d * eps``, whose minimiser is ``E[x0 | x_t]``
  of the distribution of the expert's outputs; the plain ``x0`` target does not exist here (``x_s`` is noisy);
- ``generator``: backward simulation inside the phase, j ~ U{start_k..end_k - 1}; the expert's prediction x0 at
  ``sigmas[j]`` (with gradient) is carried by one DDIM jump to ``x_s`` at ``sigma_s``; ``x_s`` is noised into
  the subinterval and moved along DMD's gradient (fake minus real, DMD's normaliser from x0). The surrogate acts
  on ``x_s``, which is the chain rule of ``dKL/dx_t`` (``dx_t/dx_s = 1`` in canonical units); LightX2V applies
  the same x0-unit gradient to x0 directly, a per-sample factor ``1 - sigma_s / sigma_j`` apart.

The DM gradient and the fake score of phase k draw timesteps only inside phase k's subinterval:
``[t(sigma_s) + margin, t(sigmas[start_k])]``, the first phase up to ``timesteps.t_max`` and the last down to
``timesteps.t_min`` (``margin`` keeps ``sigma_t`` off ``sigma_s``, where ``sigma_s^2 / d`` blows up).

Why DDIM and not LCM's re-noising sampler: consistency sampling draws fresh noise at every step, so its state at
``sigma_s`` is ``x0_hat + sigma_s z`` and the subinterval process would collapse to plain DMD on ``x0_hat``. The
paper's experts are deterministic (flow Euler), and DDIM is that sampler in VP units.

Experts are separate full copies of the teacher's UNet, not LoRA adapters on a shared base (the paper's choice
for 20B models): on a small UNet the copies cost little memory, each trains with its own optimizer state and no
adapter bookkeeping, and each exports as a plain ``UNet2DConditionModel`` folder that stock diffusers loads,
with no merge step and no risk of adapters leaking across phases. The export is a diffusers folder with one
UNet per expert and ``pipeline.py`` (``backends/phased_pipeline.py``): see ``distill/phased_export.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gendistill.backends.lora import make_fake_score
from gendistill.backends.phased_pipeline import EXPERT_NAMES
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.losses import dm_gradient, surrogate_loss
from gendistill.diffusion.samplers import ddim_step, initial_scale
from gendistill.diffusion.schedules import DiscreteVPSchedule, UniformTimestepSampler
from gendistill.diffusion.subinterval import (
    subinterval_denoising_loss,
    subinterval_noised,
)
from gendistill.diffusion.timesteps import TimestepRange, timestep_index
from gendistill.distill.dmd import randn
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent
from gendistill.distill.phased_export import phased_pipeline
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update


@dataclass
class PhasedDMDConfig:
    """Phased DMD: a K-step student whose steps are split into phases, one expert and one fake score each."""

    KIND: ClassVar[str] = "phased_dmd"

    guidance_scale: float = 1.75
    """CFG scale of the real score (the teacher); the student learns the guided distribution."""
    fake_updates: int = 5
    """Fake-score updates per generator update (DMD2's two time-scale update rule)."""
    student_steps: int = 4
    """K, the student's DDIM steps (trailing grid)."""
    phase_boundaries: list[int] = field(default_factory=lambda: [2])
    """Steps at which the next expert takes over, in (0, K): K = 4 and [2] make two 2-step phases."""
    steps_per_phase: int = 200
    """Trainer steps spent on each phase, high noise first (the last phase also takes any steps beyond)."""
    timesteps: TimestepRange = field(default_factory=lambda: TimestepRange(0.02, 0.98))
    """Outer bounds of the DM gradient's timesteps (fractions of T); each phase uses its own subinterval of them."""
    subinterval_margin: float = 0.02
    """Lowest timestep of a subinterval above its sigma_s, as a fraction of T (the target diverges at sigma_s)."""
    fake_lora_rank: int = 0
    """0: each fake score is a full trainable copy of the teacher; r > 0: a frozen copy with rank-r LoRA."""
    fake_loss_weighting: Literal["x0", "eps"] = "eps"
    """Weighting of the fake scores' subinterval loss ("eps": 1 / sigma_t^2, the epsilon MSE)."""

    @property
    def num_phases(self) -> int:
        return len(self.phase_boundaries) + 1

    def check(self, path: str) -> None:
        """UserErrors naming the key for out-of-range settings (the timestep range checks itself)."""
        for name in ("fake_updates", "student_steps", "steps_per_phase"):
            check_range(key_path(path, name), getattr(self, name), 1)
        check_range(key_path(path, "student_steps"), self.student_steps, 2, 1000)
        check_range(key_path(path, "fake_lora_rank"), self.fake_lora_rank, 0)
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0)
        check_range(key_path(path, "subinterval_margin"), self.subinterval_margin, 0.0, 0.5)
        check_choice(key_path(path, "fake_loss_weighting"), self.fake_loss_weighting, ("x0", "eps"))
        inside = all(0 < b < self.student_steps for b in self.phase_boundaries)
        increasing = all(a < b for a, b in zip(self.phase_boundaries, self.phase_boundaries[1:]))
        if not (1 <= len(self.phase_boundaries) < len(EXPERT_NAMES) and inside and increasing):
            raise UserError(f"{key_path(path, 'phase_boundaries')} must list 1 to {len(EXPERT_NAMES) - 1} increasing "
                            f"steps strictly between 0 and student_steps ({self.student_steps}), "
                            f"got {self.phase_boundaries}")

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The recipe on ``model``; the student exports as a phased pipeline sampled by trailing DDIM."""
        recipe = PhasedDMDRecipe(model, self)
        builder = partial(phased_pipeline, switch_timesteps=recipe.switch_timesteps)
        return BoundRecipe(recipe, recipe.experts, StudentSampling("ddim"), model.num_train_timesteps,
                           self.student_steps, 0.0, pipeline_builder=builder)


@dataclass(frozen=True)
class PhaseSpan:
    """One phase: its student steps ``[start, end)`` and the training timesteps of its subinterval."""

    start: int
    end: int
    t_low: int
    """Lowest timestep (inclusive) its DM gradient and fake score use."""
    t_high: int
    """Highest timestep (inclusive)."""


def phase_spans(config: PhasedDMDConfig, grid_timesteps, num_train_timesteps: int) -> list[PhaseSpan]:
    """Each phase's steps and subinterval on the student's K-step grid (``grid_timesteps``, high to low)."""
    T = num_train_timesteps
    t_min, t_max = config.timesteps.indices(T)
    margin = max(1, timestep_index(config.subinterval_margin, T))
    edges = [0, *config.phase_boundaries, config.student_steps]
    spans = []
    for k, (start, end) in enumerate(zip(edges, edges[1:])):
        low = t_min if end == config.student_steps else int(grid_timesteps[end]) + margin
        high = t_max if k == 0 else int(grid_timesteps[start])
        if low > high:
            raise UserError(f"phase {k + 1} of recipe.phase_boundaries has no timesteps left in its subinterval "
                            f"[{low}, {high}]; lower recipe.subinterval_margin or move the boundaries")
        spans.append(PhaseSpan(start, end, low, high))
    return spans


class PhasedDMDRecipe:
    """Phased DMD distilling ``model``; trainer phases ``fake_score`` (``fake_updates`` times) then ``generator``,
    both acting on the expert and fake score of the active phase only (``phase_at(step)``)."""

    def __init__(self, model: TextToImageModel, config: PhasedDMDConfig):
        check_config(config, config.KIND)
        self.models, self.config = TeacherStudent(model), config
        teacher = self.models.teacher_unet
        later = [copy.deepcopy(teacher).train().requires_grad_(True) for _ in config.phase_boundaries]
        self.experts = nn.ModuleList([self.models.student_unet, *later])
        self.fakes = nn.ModuleList([make_fake_score(teacher, config.fake_lora_rank) for _ in self.experts])
        self.expert_denoisers = [model.denoiser(network=e, boundary=None) for e in self.experts]
        self.fake_denoisers = [model.denoiser(network=f, boundary=None) for f in self.fakes]
        schedule = DiscreteVPSchedule(model.alphas_cumprod, "trailing")
        self.grid_timesteps = schedule.timesteps(config.student_steps)
        self.sigmas = schedule.sigmas(config.student_steps)
        self.spans = phase_spans(config, self.grid_timesteps, model.num_train_timesteps)
        self.subinterval_sigmas = [UniformTimestepSampler(model.train_sigmas, s.t_low, s.t_high) for s in self.spans]

    @property
    def switch_timesteps(self) -> list[int]:
        """Per later expert, the first (largest) grid timestep it denoises."""
        return [int(self.grid_timesteps[b]) for b in self.config.phase_boundaries]

    def phase_at(self, step: int) -> int:
        """The phase trainer step ``step`` (0-based) trains: high noise first, ``steps_per_phase`` each."""
        return min(step // self.config.steps_per_phase, self.config.num_phases - 1)

    def expert_of_step(self, i: int) -> int:
        """The expert that takes student step ``i``."""
        return sum(i >= b for b in self.config.phase_boundaries)

    # --- the Recipe protocol ----------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        fake = [p for p in self.fakes.parameters() if p.requires_grad]
        return [Phase("fake_score", fake, self.config.fake_updates),
                Phase("generator", list(self.experts.parameters()))]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.experts, "fake_score": self.fakes, "teacher": self.models.teacher_unet}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        """Nothing: inactive experts and fake scores get no gradient, so their optimizers leave them alone."""

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        k = self.phase_at(step)
        if phase == "fake_score":
            return self.fake_score_loss(batch, k, generator)
        if phase == "generator":
            return self.generator_loss(batch, k, generator)
        raise ValueError(f"unknown phase {phase!r}; phased DMD has fake_score and generator")

    # --- the student's samples --------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, batch: DistillBatch, generator: torch.Generator, steps: int) -> Tensor:
        """The student's DDIM state after its first ``steps`` steps from fresh noise (no gradient), each step
        taken by its phase's expert."""
        noise = randn((batch.size, *self.models.latent_shape), generator, batch.cond.embeds.device)
        x = initial_scale(float(self.sigmas[0]), "vp") * noise
        for i in range(steps):
            denoiser = self.expert_denoisers[self.expert_of_step(i)]
            x = ddim_step(denoiser, x, float(self.sigmas[i]), float(self.sigmas[i + 1]), batch.cond)
        return x

    def _subinterval_point(self, x_s: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(sigma_s, sigma_t, eps)``: phase k's start of subinterval, a sigma drawn inside it, and noise."""
        sigma_s = x_s.new_full((x_s.shape[0],), float(self.sigmas[self.spans[k].end]))
        sigma_t = self.subinterval_sigmas[k](x_s.shape[0], generator).to(device=x_s.device, dtype=x_s.dtype)
        return sigma_s, sigma_t, randn(x_s.shape, generator, x_s.device, x_s.dtype)

    # --- the two phases ---------------------------------------------------------------------------

    def generator_loss(self, batch: DistillBatch, k: int, generator: torch.Generator) -> Loss:
        span = self.spans[k]
        j = int(torch.randint(span.start, span.end, (1,), generator=generator))
        x = self.rollout(batch, generator, j)
        sigma_j, sigma_end = float(self.sigmas[j]), float(self.sigmas[span.end])
        x0 = self.expert_denoisers[k](x, x.new_tensor(sigma_j), batch.cond)
        x_s = x0 + (x - x0) * (sigma_end / sigma_j)  # one DDIM jump to the phase's end (x0 itself when it is 0)
        sigma_s, sigma_t, eps = self._subinterval_point(x_s, k, generator)
        with torch.no_grad():
            x_t = subinterval_noised(x_s.detach(), sigma_s, sigma_t, eps)
            real = self.models.teacher_cfg(batch, self.config.guidance_scale)(x_t, sigma_t, batch.cond)
            fake = self.fake_denoisers[k](x_t, sigma_t, batch.cond)
        grad = dm_gradient(x0, real, fake, sigma_t, weighting="dmd")
        dm = surrogate_loss(x_s, grad) / x_s[0].numel()  # per element, as DMD2's 0.5 * mse(x, x - grad)
        return Loss(dm, {"dm": dm.item(), "dm_grad": grad.abs().mean().item(), "phase": float(k + 1),
                         "student_step": float(j + 1)})

    def fake_score_loss(self, batch: DistillBatch, k: int, generator: torch.Generator) -> Loss:
        """Score matching within phase k's subinterval on the experts' current samples at its ``sigma_s``."""
        x_s = self.rollout(batch, generator, self.spans[k].end)
        sigma_s, sigma_t, eps = self._subinterval_point(x_s, k, generator)
        total = subinterval_denoising_loss(self.fake_denoisers[k], x_s, sigma_s, sigma_t, eps, batch.cond,
                                           self.config.fake_loss_weighting)
        return Loss(total, {"denoise": total.item(), "phase": float(k + 1)})
