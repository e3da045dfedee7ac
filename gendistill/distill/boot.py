"""BOOT: data-free distillation of a diffusion teacher into a one-step student, by bootstrapping.

Gu, Zhai, Zhang, Liu, Susskind, "BOOT: Data-free Distillation of Denoising Diffusion Models with Bootstrapping",
arXiv:2306.05544 (2023). Written from the paper's equations; its reference code was not available to read here.

The student learns from prompts alone: no image, no latent, no precomputed teacher trajectory reaches it (the
recipe refuses batches that carry latents).

**The signal.** The teacher's deterministic DDIM sampler started from pure noise ``eps`` visits states ``x_t``.
The paper writes them ``x_t = alpha_t y_t + sigma_t eps`` (VP units) and learns the *signal* ``y_t``. In this
library's canonical units (``x = x_vp / alpha``, ``sigma = sigma_vp / alpha``) that is simply

    x = y + sigma * eps,        y = x - sigma * eps.

Put into the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` it gives the paper's Signal-ODE,
``dy/dsigma = (y - D(y + sigma eps, sigma)) / sigma`` (``dy/dlambda = y - D`` in ``lambda = log sigma``, the
paper's negative half log-SNR), in which eps appears only inside the teacher's input. One DDIM step
``x_s = x0 + (sigma_s / sigma_t) (x_t - x0)``, ``x0 = D(x_t, sigma_t)``, is in signal units (subtract
``sigma_s eps`` from both sides; the eps terms cancel exactly)

    y_s = x0 + (sigma_s / sigma_t) (y_t - x0) = y_t + delta (x0 - y_t),    delta = 1 - sigma_s / sigma_t,

the paper's discrete step with ``delta = 1 - exp(lambda_s - lambda_t)`` (``signal_ddim_step``).

**The student** ``g(eps, t, c)`` is a copy of the teacher's UNet (initialised from it), fed the pure noise eps
(VP units) at timestep ``t``; its output *is* the signal (``student_prediction: sample``, the default; in
canonical units ``g(eps, t) = D_student(sqrt(1 + sigma_t^2) eps, sigma_t, c)``, ``student_signal``). Reading it
through the teacher's prediction type instead (``student_prediction: teacher``) cannot reach the end of the
grid: at timestep 0 (sigma 0.03) an epsilon or v output enters x0 multiplied by sigma, so mapping noise to an
image needs outputs 30x the usual scale; measured on the shapes teacher, such a student matched the teacher's
signal trajectory to 10% from timestep 959 to 120 but stayed noise at timestep 0 (prompt accuracy 0.08). For a
v-prediction teacher the copy's output layer is negated: at zero terminal SNR the teacher's x0 from pure noise is
exactly ``-v``, so the initial student meets the paper's boundary condition ``g(eps, T) = f(eps, T)``.

**The loss.** A grid of ``N = bootstrap_steps`` steps, ``tau_0 = T - 1 > tau_1 > ... > tau_N = 0`` (evenly spaced
integer timesteps). Per sample, ``k`` is uniform in ``0..N-1``; ``y_k`` is the stop-gradient student
``g(eps, tau_k)`` (or the boundary value below for ``k = 0``); one teacher DDIM step under classifier-free
guidance takes ``y_k`` to ``y_{k+1}``; and ``g(eps, tau_{k+1})`` is regressed onto it:

    L = E [ || g(eps, tau_{k+1}, c) - SG(y_k + delta_k (D_cfg(y_k + sigma_k eps, sigma_k, c) - y_k)) ||^2 / delta_k^2 ].

The division by ``delta_k^2`` is the paper's rescaling of the bootstrapping error by its SNR-dependent step
length (as we read its objective; no reference code was at hand to confirm the exact factor): the loss
compares the student's finite difference ``(g_{k+1} - g_k) / delta_k`` with the Signal-ODE's derivative
``D - y``, so long and short steps count alike (``weighting: boot``; ``uniform`` drops it).
The stop-gradient target is the student itself, as in the paper: no EMA target network.

**The boundary at t = T, and zero terminal SNR.** The paper ties ``g(eps, T)`` to the teacher's prediction from
pure noise ``f(eps, T)``, which is what the first DDIM step lands on as ``alpha_T -> 0``. Here the boundary is
the exact start of the teacher's DDIM for any schedule: at ``tau_0 = T - 1`` the state is VP noise, canonical
``x = sqrt(1 + sigma_0^2) eps``, whose signal is known in closed form,

    y_0 = (sqrt(1 + sigma_0^2) - sigma_0) eps = eps / (sqrt(1 + sigma_0^2) + sigma_0)     (``noise_signal``),

so the student is never asked for it and is trained on ``tau_1 .. tau_N`` only; the ``k = 0`` term regresses
``g(eps, tau_1)`` onto one guided teacher step from pure noise. For a zero-terminal-SNR teacher (the shapes
teacher: alpha-bar_T = 0, clamped by diffusers to 2^-24, so ``sigma_0 = 4096``) ``y_0 = 1.2e-4 eps`` and
``sigma_1 / sigma_0 = 0.026`` (50 steps: ``tau_1 = 979``, ``sigma_1 = 108``), so that term is the paper's
``g(eps, tau_1) = f(eps, T)`` up to that 2.6%, reached without evaluating anything at the singular
``alpha_T = 0``. For a teacher with SNR > 0 at T (SD 1.5: ``sigma_0 = 14.6``) it is the exact first DDIM step
instead of the paper's ``alpha_T -> 0`` approximation.

**Sampling and export.** The one-step sample is ``g(eps, tau_N = 0, c)``, the signal at timestep 0 (sigma 0.03
for SD's schedule; the paper's ``t_min ~ 0``). Stock diffusers computes exactly this with
``DDIMScheduler(timestep_spacing="linspace", set_alpha_to_one=True)`` at ``num_inference_steps=1``: it visits
timestep 0 with the latents eps, reads the UNet's output as x0 through the prediction type and steps to
alpha-bar 1, returning that x0 (``boot_scheduler``). An LCMScheduler cannot: its one step sits at the top of its
grid. More steps would feed the student a noisy ``x_t`` where it expects eps, so the student takes one step.
Guidance is distilled (the teacher's ``guidance_scale``); the student is sampled without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.adapters import VPDenoiser
from gendistill.diffusion.denoiser import Denoiser, TextCondition, expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.distill.dmd import randn
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update

Weighting = Literal["boot", "uniform"]
WEIGHTINGS = ("boot", "uniform")
StudentPrediction = Literal["sample", "teacher"]
STUDENT_PREDICTIONS = ("sample", "teacher")


@dataclass
class BOOTConfig:
    """BOOT: a one-step student learns the teacher's DDIM signal trajectory from prompts alone."""

    KIND: ClassVar[str] = "boot"

    guidance_scale: float = 2.0
    """CFG scale of the teacher's DDIM steps, distilled into the student (sampled without guidance; <= 1: none)."""
    bootstrap_steps: int = 50
    """N, the teacher DDIM steps of the grid from timestep T - 1 down to 0; each loss term bootstraps one of them."""
    weighting: Weighting = "boot"
    """boot: each step's squared error divided by delta^2, delta = 1 - sigma_s / sigma_t (the paper's); uniform: not."""
    student_prediction: StudentPrediction = "sample"
    """sample: the student's network outputs the signal itself; teacher: it is read through the teacher's
    prediction type (epsilon / v), which cannot express an image from noise near timestep 0 (module docstring)."""

    def check(self, path: str) -> None:
        """UserErrors naming the key (the grid's upper bound depends on the teacher: checked by the recipe)."""
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0.0)
        check_range(key_path(path, "bootstrap_steps"), self.bootstrap_steps, 1)
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)
        check_choice(key_path(path, "student_prediction"), self.student_prediction, STUDENT_PREDICTIONS)

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The BOOT recipe on ``model``; its student exports for one linspace DDIM step (``boot_pipeline``)."""
        recipe = BOOTRecipe(model, self)
        prediction = recipe.student_prediction_type
        return BoundRecipe(recipe, recipe.models.student_unet, StudentSampling("ddim"), 1, 1, 0.0,
                           pipeline_builder=lambda pipe, unet, scheduler: boot_pipeline(pipe, unet, scheduler,
                                                                                        prediction))


# --- the math, in canonical units ---------------------------------------------------------------


def signal_of(x: Tensor, eps: Tensor, sigma) -> Tensor:
    """The signal ``y = x - sigma eps`` of a state ``x`` on the trajectory started from ``eps``."""
    return x - expand_sigma(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x) * eps


def state_of(y: Tensor, eps: Tensor, sigma) -> Tensor:
    """The state ``x = y + sigma eps`` of a signal ``y`` (the inverse of ``signal_of``)."""
    return y + expand_sigma(torch.as_tensor(sigma, dtype=y.dtype, device=y.device), y) * eps


def noise_signal(eps: Tensor, sigma) -> Tensor:
    """The signal of the DDIM start ``x = sqrt(1 + sigma^2) eps`` (VP noise ``eps``): ``(sqrt(1 + sigma^2) - sigma)
    eps``, computed as ``eps / (sqrt(1 + sigma^2) + sigma)``, which stays exact at sigma 4096 (zero terminal SNR)."""
    s = expand_sigma(torch.as_tensor(sigma, dtype=eps.dtype, device=eps.device), eps)
    return eps / ((1 + s**2).sqrt() + s)


def signal_ddim_step(teacher: Denoiser, y: Tensor, eps: Tensor, sigma, sigma_next, cond=None) -> Tensor:
    """One teacher DDIM step in signal units: ``x0 + (sigma_next / sigma) (y - x0)``, ``x0 = teacher(y + sigma eps)``;
    equal to ``signal_of(ddim_step(teacher, state_of(y, eps, sigma), ...), eps, sigma_next)``. Per-sample sigmas."""
    sigma = torch.as_tensor(sigma, dtype=y.dtype, device=y.device)
    sigma_next = torch.as_tensor(sigma_next, dtype=y.dtype, device=y.device)
    x0 = teacher(state_of(y, eps, sigma), sigma, cond)
    return x0 + (expand_sigma(sigma_next, y) / expand_sigma(sigma, y)) * (y - x0)


def student_signal(student: Denoiser, eps: Tensor, sigma, cond=None) -> Tensor:
    """``g(eps, sigma)``: the student's denoiser at the state whose VP input is ``eps`` (``sqrt(1 + sigma^2) eps``),
    i.e. its network fed pure noise at sigma's timestep and read as x0."""
    sigma = torch.as_tensor(sigma, dtype=eps.dtype, device=eps.device)
    return student((1 + expand_sigma(sigma, eps) ** 2).sqrt() * eps, sigma, cond)


def step_weight(sigma: Tensor, sigma_next: Tensor, weighting: Weighting = "boot") -> Tensor:
    """Per-sample weight of a bootstrap step's squared error: ``1 / delta^2``, ``delta = 1 - sigma_next / sigma``
    (boot), or 1 (uniform)."""
    if weighting == "boot":
        return (1 - sigma_next / sigma).pow(-2)
    if weighting == "uniform":
        return torch.ones_like(sigma)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def bootstrap_timesteps(num_train_timesteps: int, steps: int, path: str = "recipe") -> np.ndarray:
    """The grid ``tau_0 = T - 1 > ... > tau_N = 0`` of ``N = steps`` evenly spaced integer timesteps, (N + 1,)."""
    T = num_train_timesteps
    check_range(key_path(path, "bootstrap_steps"), steps, 1, T - 1)  # more would repeat a timestep
    return np.round(np.linspace(T - 1, 0, steps + 1)).astype(np.int64)


# --- export -------------------------------------------------------------------------------------


def boot_scheduler(teacher_scheduler_config: dict, prediction_type: str):
    """The teacher's noise schedule in a DDIMScheduler whose one step visits timestep 0 and lands on alpha-bar 1,
    returning the UNet's x0 there (read through ``prediction_type``): ``g(eps, 0)`` (steps_offset is unused by
    linspace spacing; 1 keeps the SD pipelines from rewriting it)."""
    from diffusers import DDIMScheduler

    base = {k: v for k, v in dict(teacher_scheduler_config).items() if not k.startswith("_")}
    return DDIMScheduler.from_config(base, timestep_spacing="linspace", set_alpha_to_one=True, clip_sample=False,
                                     thresholding=False, steps_offset=1, prediction_type=prediction_type)


def boot_pipeline(teacher_pipe, student_unet: nn.Module, scheduler, prediction_type: str):
    """``BoundRecipe.pipeline_builder``: the teacher's pipeline class with the student UNet and ``boot_scheduler``."""
    return type(teacher_pipe)(**{**teacher_pipe.components, "unet": student_unet,
                                 "scheduler": boot_scheduler(scheduler.config, prediction_type)})


def negate_output_layer(unet: nn.Module) -> None:
    """Negate a UNet's output (its ``conv_out``): a v-prediction copy then outputs ``-v``, which is x0 where
    alpha is 0 (v = alpha eps - sigma_vp x0)."""
    with torch.no_grad():
        unet.conv_out.weight.neg_()
        if unet.conv_out.bias is not None:
            unet.conv_out.bias.neg_()


# --- the recipe ---------------------------------------------------------------------------------


class BOOTRecipe:
    """BOOT on ``model``: one phase, "student"; only the student is checkpointed (the frozen teacher is reloaded
    from its source). ``teacher`` and ``student`` are the two denoisers the loss uses."""

    def __init__(self, model: TextToImageModel, config: BOOTConfig):
        check_config(config, config.KIND)
        self.models, self.config = TeacherStudent(model), config
        self.timesteps = bootstrap_timesteps(model.num_train_timesteps, config.bootstrap_steps)
        self.sigmas = model.train_sigmas[torch.from_numpy(self.timesteps)]
        self.teacher: Denoiser = self.models.teacher()
        self.student: Denoiser = self.models.student()  # read through the teacher's prediction type
        self.student_prediction_type = model.prediction_type
        if config.student_prediction == "sample":
            self.student_prediction_type = "sample"
            if model.prediction_type == "v_prediction":
                negate_output_layer(self.models.student_unet)
            self.student = VPDenoiser(self.models.student_unet, model.alphas_cumprod, "sample")

    # --- the protocol --------------------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        return [Phase("student", [p for p in self.models.student_unet.parameters() if p.requires_grad])]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.models.student_unet}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        """Nothing: the bootstrap target is the student itself (no target network); the trainer keeps the EMA."""

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase != "student":
            raise ValueError(f"unknown phase {phase!r}; BOOT has student")
        if batch.latents is not None:
            raise UserError("boot is data-free: its batches must carry prompts only; set data.with_latents: false")
        device = self._device()
        cond, uncond = batch.cond.to(device), batch.uncond.to(device)
        k = torch.randint(0, len(self.timesteps) - 1, (batch.size,), generator=generator).to(device)
        eps = randn((batch.size, *self.models.latent_shape), generator, device)
        sigmas = self.sigmas.to(device=device, dtype=eps.dtype)
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        with torch.no_grad():
            y = self.signal_at(eps, k, cond)
            teacher = CFGDenoiser(self.teacher, uncond, self.config.guidance_scale)
            target = signal_ddim_step(teacher, y, eps, sigma, sigma_next, cond)
        y_next = student_signal(self.student, eps, sigma_next, cond)
        error = (y_next - target).pow(2).mean(dim=list(range(1, eps.ndim)))
        total = (step_weight(sigma, sigma_next, self.config.weighting) * error).mean()
        return Loss(total, {"signal_mse": error.mean().item(), "boundary_share": (k == 0).float().mean().item()})

    # --- the trajectory ------------------------------------------------------------------------------

    def signal_at(self, eps: Tensor, k: Tensor, cond: TextCondition) -> Tensor:
        """``y`` at grid point ``k`` (per sample): the closed-form start for ``k = 0``, else the student's
        ``g(eps, tau_k)`` (call without gradient for the bootstrap target)."""
        sigma = self.sigmas.to(device=eps.device, dtype=eps.dtype)[k]
        y = noise_signal(eps, sigma)
        inner = (k > 0).nonzero().flatten()
        if len(inner):
            y[inner] = student_signal(self.student, eps[inner], sigma[inner], cond.take(inner)).to(y.dtype)
        return y

    @torch.no_grad()
    def sample(self, eps: Tensor, cond: TextCondition) -> Tensor:
        """The one-step sample ``g(eps, 0, c)`` for standard normal latents ``eps``: what the exported pipeline
        returns (``output_type="latent"``) for ``latents=eps`` at one step without guidance."""
        sigma = eps.new_full((eps.shape[0],), float(self.sigmas[-1]))
        return student_signal(self.student, eps, sigma, cond)

    def _device(self) -> torch.device:
        """The student's device; the frozen teacher, not the trainer's, follows it there."""
        device = next(self.models.student_unet.parameters()).device
        param = next(self.models.teacher_unet.parameters(), None)
        if param is not None and param.device != device:
            self.models.teacher_unet.to(device)
        return device
