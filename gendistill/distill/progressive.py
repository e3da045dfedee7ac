"""Progressive distillation (Salimans & Ho 2022): halve the sampler's steps, stage after stage.

In each stage a student taking N deterministic DDIM steps learns to do in ONE step what the stage teacher
does in TWO on a 2N-step grid. The grids are diffusers' "trailing" DDIM grids, which is what the exported
``DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True)`` visits, so every N-grid sigma is a
2N-grid sigma and a student step ``[sigma_i -> sigma_{i+1}]`` is exactly two teacher steps. The student is
regressed on the x0 that makes one DDIM step land where the two teacher steps land (canonical units,
``r = sigma_next / sigma``): ``x0_target = (x'' - r x) / (1 - r)``, which is ``x''`` itself at sigma_next = 0.

The first stage's teacher is the real teacher under classifier-free guidance, so the guidance is distilled
into the student (sampled with guidance off); each later stage's teacher is a frozen copy of the student as
it was when the stage began. The stage index and that copy are modules, so a resumed run continues exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.denoiser import Denoiser, expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.samplers import ddim_step, initial_scale
from gendistill.diffusion.schedules import DiscreteVPSchedule
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_range, key_path
from gendistill.recipe import Loss, Phase, Update

Target = Literal["x0", "v"]
Weighting = Literal["truncated_snr", "snr_plus_one"]


@dataclass
class ProgressiveConfig:
    """Progressive distillation: a chain of stages, each halving the student's DDIM steps."""

    KIND: ClassVar[str] = "progressive"

    start_steps: int = 32
    """DDIM steps of the guided teacher the first stage distils; the first student takes half as many."""
    final_steps: int = 4
    """DDIM steps of the last stage's student: what the exported student is sampled with."""
    steps_per_stage: int = 1000
    """Trainer steps spent in each stage (the last stage also takes any steps beyond the chain)."""
    guidance_scale: float = 3.0
    """Classifier-free guidance of the first stage's teacher, distilled into the student (<= 1: none)."""
    target: Target = "x0"
    """Units the regression is written in: the student's x0 or its v; same objective for a given weighting."""
    weighting: Weighting = "truncated_snr"
    """Weight on the x0 error: max(snr, 1) (the paper's truncated SNR) or snr + 1 (a plain v loss)."""
    data: Literal["latents", "teacher"] = "latents"
    """Where x at the student's sigma comes from: real latents noised, or noise run down by the stage teacher."""

    def student_steps(self) -> list[int]:
        """The student's DDIM steps in each stage, e.g. [16, 8, 4] for 32 -> 4."""
        self.check(self.KIND)
        return [self.start_steps >> (k + 1) for k in range(int(math.log2(self.start_steps // self.final_steps)))]

    def check(self, path: str) -> None:
        """UserErrors naming the key unless the steps form a halving chain and the choices are known."""
        start, final = self.start_steps, self.final_steps
        if final < 1 or start <= final or start % final or (start // final) & (start // final - 1):
            raise UserError(f"{key_path(path, 'start_steps')} must be {key_path(path, 'final_steps')} times a power "
                            f"of two >= 2 (e.g. 32 -> 4), got start_steps={start}, final_steps={final}")
        check_range(key_path(path, "steps_per_stage"), self.steps_per_stage, 1)
        for name, allowed in (("target", get_args(Target)), ("weighting", get_args(Weighting)),
                              ("data", ("latents", "teacher"))):
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"{key_path(path, name)} must be one of {', '.join(allowed)}, got {value!r}")

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The progressive recipe on ``model``; its student is exported for trailing DDIM."""
        recipe = ProgressiveRecipe(model, self)
        return BoundRecipe(recipe, recipe.models.student_unet, StudentSampling("ddim"), 1000, self.final_steps, 0.0)


# --- grids ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageGrids:
    """The sigmas of one stage (float64, decreasing, ending at 0): ``teacher[2 * i] == student[i]``."""

    student: Tensor
    """The N-step trailing DDIM grid the student is trained (and exported) on, (N + 1,)."""
    teacher: Tensor
    """The 2N-step trailing DDIM grid the stage teacher steps on, (2N + 1,)."""

    @property
    def steps(self) -> int:
        return len(self.student) - 1


def check_nested(student: Tensor, teacher: Tensor) -> None:
    """Raise a UserError unless ``teacher`` has twice the steps and holds every ``student`` sigma at even index."""
    n = len(student) - 1
    if len(teacher) != 2 * n + 1 or not torch.allclose(teacher[::2], student, rtol=1e-12, atol=0.0):
        raise UserError(f"progressive: the {2 * n}-step trailing grid does not contain every {n}-step sigma, "
                        f"so one student step is not two teacher steps; use step counts whose doubles "
                        f"divide the number of training timesteps")


def check_exportable_steps(final_steps: int, num_train_timesteps: int, path: str = "recipe") -> None:
    """Raise a UserError unless ``final_steps`` divides the training timesteps. The exported trailing
    ``DDIMScheduler`` steps from each timestep to ``t - T // n``: only for a divisor ``n`` is that the next grid
    timestep, and the last step lands at alpha-bar 1. (Checked here, not in ``ProgressiveConfig.check``: the
    teacher's ``T`` is known only once it is loaded.)"""
    T = num_train_timesteps
    if T % final_steps:
        choices = ", ".join(str(d) for d in range(1, T // 4 + 1) if T % d == 0)  # start >= 2 final, 2 start <= T
        raise UserError(f"{key_path(path, 'final_steps')} must divide the teacher's {T} training timesteps, or the "
                        f"exported DDIM scheduler samples off the trained grid and ends at alpha-bar != 1; choose "
                        f"one of {choices}, got {final_steps}")


def stage_grids(alphas_cumprod: Tensor, n: int) -> StageGrids:
    """The N- and 2N-step grids of a stage whose student takes ``n`` steps, checked to nest."""
    schedule = DiscreteVPSchedule(alphas_cumprod, "trailing")
    T = schedule.num_train_timesteps
    if 2 * n > T:
        raise UserError(f"progressive: a {n}-step student needs a {2 * n}-step teacher grid, but the "
                        f"schedule has only {T} training timesteps")
    grids = StageGrids(schedule.sigmas(n), schedule.sigmas(2 * n))
    check_nested(grids.student, grids.teacher)
    return grids


# --- the target ------------------------------------------------------------------------------------


def solve_x0_target(x: Tensor, x_next: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """The x0 with which ONE DDIM step from ``x`` at ``sigma`` lands on ``x_next`` at ``sigma_next``:
    ``(x_next - r x) / (1 - r)``, ``r = sigma_next / sigma`` (the paper's eq. in canonical units)."""
    r = expand_sigma(torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device), x) \
        / expand_sigma(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x)
    return (x_next - r * x) / (1 - r)


def two_step_target(teacher: Denoiser, x: Tensor, grids: StageGrids, index: Tensor, cond=None) -> Tensor:
    """The x0 target of student step ``index`` (per sample): two teacher DDIM steps on the 2N grid from
    ``x`` at ``student[index]``, then solved for the one-step x0."""
    fine = grids.teacher.to(device=x.device, dtype=x.dtype)
    sigma, sigma_mid, sigma_next = fine[2 * index], fine[2 * index + 1], fine[2 * index + 2]
    x_mid = ddim_step(teacher, x, sigma, sigma_mid, cond)
    x_next = ddim_step(teacher, x_mid, sigma_mid, sigma_next, cond)
    return solve_x0_target(x, x_next, sigma, sigma_next)


def teacher_start(teacher: Denoiser, noise: Tensor, grids: StageGrids, index: Tensor, cond=None) -> Tensor:
    """x at ``student[index]`` made without data: ``initial_scale(sigma_max) * noise`` run by the teacher's
    DDIM over the 2N grid, each sample stopping after its own ``2 * index`` steps."""
    fine = grids.teacher.to(device=noise.device, dtype=noise.dtype)
    x = noise * initial_scale(float(grids.teacher[0]), "vp")
    stops = 2 * index.to(noise.device)
    for k in range(int(stops.max()) if len(stops) else 0):
        moved = ddim_step(teacher, x, fine[k], fine[k + 1], cond)
        x = torch.where((k < stops).reshape(-1, *[1] * (x.ndim - 1)), moved, x)
    return x


def v_from_x0(x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """VP v-prediction ``alpha eps - sigma_vp x0`` of a canonical ``(x, sigma, x0)`` (sigma broadcast to x)."""
    return (x / (1 + sigma**2) - x0) * (1 + sigma**2).sqrt() / sigma


def weighted_error(x0_hat: Tensor, x0_target: Tensor, x: Tensor, sigma: Tensor, target: Target = "x0",
                   weighting: Weighting = "truncated_snr") -> Tensor:
    """Per-sample ``w(sigma) * mean |x0_hat - x0_target|^2`` with ``snr = 1 / sigma^2`` and ``w`` the
    paper's max(snr, 1) or snr + 1. With ``target="v"`` it is computed on v, whose error is
    ``sqrt(1 + snr)`` times the x0 error, with the weight divided by 1 + snr: the same objective."""
    sig = expand_sigma(sigma, x)
    snr = sig.flatten().pow(-2)
    if weighting == "truncated_snr":
        weight = snr.clamp(min=1.0)
    elif weighting == "snr_plus_one":
        weight = snr + 1
    else:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of truncated_snr, snr_plus_one")
    if target == "x0":
        pred, goal = x0_hat, x0_target
    elif target == "v":
        pred, goal, weight = v_from_x0(x0_hat, x, sig), v_from_x0(x0_target, x, sig), weight / (1 + snr)
    else:
        raise ValueError(f"unknown target {target!r}; choose one of x0, v")
    return weight * (pred - goal).pow(2).mean(dim=list(range(1, x.ndim)))


# --- the recipe ----------------------------------------------------------------------------------


def _follow(module: nn.Module, device: torch.device) -> None:
    """Move a frozen module that the trainer does not own (the real teacher) to the student's device."""
    param = next(module.parameters(), None)
    if param is not None and param.device != device:
        module.to(device)


class StageCounter(nn.Module):
    """The index of the stage the stage teacher belongs to, in a buffer so checkpoints carry it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("stage", torch.zeros((), dtype=torch.long))

    @property
    def value(self) -> int:
        return int(self.stage)


class ProgressiveRecipe:
    """Progressive distillation of ``model``'s network into a student (a copy of it, or ``student``).

    One phase, "student". Modules checkpointed: the student, the current stage teacher (a frozen copy of
    the student taken when its stage began; unused in stage 0, whose teacher is the real guided teacher)
    and the stage counter. The real teacher is frozen and not checkpointed: it is reloaded from its source.
    """

    def __init__(self, model: TextToImageModel, config: ProgressiveConfig, student: nn.Module | None = None):
        self.models, self.config = TeacherStudent(model, student), config
        self.stage_steps = config.student_steps()
        self.grids = [stage_grids(model.alphas_cumprod, n) for n in self.stage_steps]
        check_exportable_steps(config.final_steps, len(model.alphas_cumprod))
        self.stage_teacher_unet = copy.deepcopy(self.models.student_unet).eval().requires_grad_(False)
        self.counter = StageCounter()
        self.student = self.models.student()
        self.teacher = self.models.teacher()
        self.previous_student = model.denoiser(network=self.stage_teacher_unet, boundary=None)

    # --- stages --------------------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.stage_steps)

    @property
    def final_steps(self) -> int:
        """The DDIM steps the exported student is sampled with."""
        return self.config.final_steps

    @property
    def total_steps(self) -> int:
        """Trainer steps that run the whole chain once."""
        return self.num_stages * self.config.steps_per_stage

    def stage_at(self, step: int) -> int:
        """The stage whose loss trainer step ``step`` (0-based) computes."""
        return min(step // self.config.steps_per_stage, self.num_stages - 1)

    def student_steps_at(self, step: int) -> int:
        """DDIM steps the student is trained for at trainer step ``step`` (0-based). After ``done`` steps,
        the student is sampled with ``student_steps_at(done - 1)`` steps."""
        return self.stage_steps[self.stage_at(step)]

    def stage_start_steps(self) -> list[int]:
        """Trainer steps at which a stage begins (after the first)."""
        return [k * self.config.steps_per_stage for k in range(1, self.num_stages)]

    def enter_stage(self, stage: int) -> None:
        """Freeze a copy of the current student as the stage teacher and record the stage."""
        self.stage_teacher_unet.load_state_dict(self.models.student_unet.state_dict())
        self.counter.stage.fill_(stage)

    def stage_teacher(self, batch: DistillBatch) -> Denoiser:
        """Stage 0: the real teacher with guidance; later: the frozen previous student, unguided."""
        if self.counter.value == 0:
            _follow(self.models.teacher_unet, self._device())
            return CFGDenoiser(self.teacher, batch.uncond, self.config.guidance_scale)
        return self.previous_student

    # --- the protocol --------------------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        return [Phase("student", [p for p in self.models.student_unet.parameters() if p.requires_grad])]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.models.student_unet, "stage_teacher": self.stage_teacher_unet,
                "stage": self.counter}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        pass

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        stage = self._sync_stage(step)
        grids = self.grids[stage]
        batch = _to_device(batch, self._device())
        teacher = self.stage_teacher(batch)
        index = torch.randint(0, grids.steps, (batch.size,), generator=generator, device=generator.device)
        index = index.to(self._device())
        with torch.no_grad():
            x = self._start(batch, grids, index, teacher, generator)
            x0_target = two_step_target(teacher, x, grids, index, batch.cond)
        sigma = grids.student.to(device=x.device, dtype=x.dtype)[index]
        x0_hat = self.student(x, sigma, batch.cond)
        per_sample = weighted_error(x0_hat, x0_target, x, sigma, self.config.target, self.config.weighting)
        total = per_sample.mean()
        x0_mse = (x0_hat.detach() - x0_target).pow(2).mean().item()
        return Loss(total, {"x0_mse": x0_mse, "stage": float(stage), "student_steps": float(grids.steps)})

    def _sync_stage(self, step: int) -> int:
        """Enter the stage of ``step`` if it is new (deterministic in the step, so resume replays it)."""
        stage = self.stage_at(step)
        if stage > self.counter.value:
            self.enter_stage(stage)
        elif stage < self.counter.value:
            raise UserError(f"progressive: step {step + 1} belongs to stage {stage + 1}, but the checkpoint is "
                            f"in stage {self.counter.value + 1}; resume with the steps_per_stage it was made with")
        return stage

    def _device(self) -> torch.device:
        return next(self.models.student_unet.parameters()).device

    def _start(self, batch: DistillBatch, grids: StageGrids, index: Tensor, teacher: Denoiser,
               generator: torch.Generator) -> Tensor:
        """x at the student's sigma: real latents noised, or the stage teacher's own trajectory."""
        device = index.device
        if self.config.data == "teacher":
            noise = torch.randn((batch.size, *self.models.latent_shape), generator=generator,
                                device=generator.device).to(device)
            return teacher_start(teacher, noise, grids, index, batch.cond)
        if batch.latents is None:
            raise UserError("progressive: data is 'latents' but the batches carry no latents; "
                            "set data: teacher to start from the stage teacher's own samples")
        latents = batch.latents
        noise = torch.randn(latents.shape, generator=generator, device=generator.device,
                            dtype=latents.dtype).to(device)
        sigma = grids.student.to(device=device, dtype=latents.dtype)[index]
        return latents + expand_sigma(sigma, latents) * noise


def _to_device(batch: DistillBatch, device: torch.device) -> DistillBatch:
    """The batch's tensors on the student's device (batch functions may build them on the CPU)."""
    latents = None if batch.latents is None else batch.latents.to(device)
    return replace(batch, cond=batch.cond.to(device), uncond=batch.uncond.to(device), latents=latents)
