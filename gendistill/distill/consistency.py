"""Latent consistency distillation (Luo et al. 2023, LCM), full UNet or LCM-LoRA.

One training step, in canonical units (``x = x0 + sigma * eps``):

1. pick a point of the skipping-step grid: ``t_{n+k}`` among the ``num_ddim_timesteps`` timesteps that the
   exported ``LCMScheduler(original_inference_steps=num_ddim_timesteps)`` samples from, and
   ``t_n = max(t_{n+k} - k, 0)`` with ``k = T // num_ddim_timesteps``;
2. noise real latents to ``t_{n+k}``;
3. the teacher, with classifier-free guidance at scale ``w``, takes ONE deterministic DDIM step from
   ``t_{n+k}`` to ``t_n`` (the skipping-step ODE solver);
4. the online student predicts at ``t_{n+k}``, the EMA target predicts at ``t_n`` on the teacher's point,
   both through LCM's boundary condition (``LCMBoundaryDenoiser``: exactly what diffusers' LCMScheduler
   applies at sampling time, so the export samples what was trained). At ``t_n = 0`` the boundary
   condition makes the target the teacher's point itself;
5. the loss is the pseudo-Huber (or L2) distance between the two.

Guidance is distilled in, either as LCM's w-embedding (``timestep_cond``: one network call per sampling step
at any scale in ``[w_min, w_max]``) or at one fixed scale (LCM-LoRA: the LoRA must load onto a stock UNet,
which has no w-embedding). Scales follow diffusers' convention (``guidance_scale``; LCM's paper writes
``w - 1``), so a student trained at ``w`` is sampled with ``pipe(..., guidance_scale=w)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.adapters import LCMBoundaryDenoiser, network_dtype
from gendistill.diffusion.denoiser import Denoiser, TextCondition, expand_sigma
from gendistill.diffusion.schedules import LCMSchedule, vp_sigmas_from_alphas_cumprod
from gendistill.diffusion.samplers import ddim_step
from gendistill.backends.lora import lora_student, mark_only_lora_trainable
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update


@dataclass
class LCMConfig:
    """Latent consistency distillation (LCM) of a full UNet, or of LoRA adapters (LCM-LoRA)."""

    KIND: ClassVar[str] = "lcm"

    num_ddim_timesteps: int = 50
    """Skipping-step grid size N (the export's ``original_inference_steps``); the skip is k = T // N."""
    guidance: Literal["embedding", "fixed"] = "embedding"
    """How guidance is distilled in: a w-embedding (``timestep_cond``) or one fixed scale."""
    w_min: float = 4.0
    """Smallest guidance scale drawn for the w-embedding (diffusers' convention: LCM's w + 1)."""
    w_max: float = 16.0
    """Largest guidance scale drawn for the w-embedding (diffusers' convention: LCM's w + 1)."""
    guidance_scale: float = 7.5
    """The teacher's guidance scale with guidance "fixed" (diffusers' rule: <= 1 means no guidance)."""
    loss: Literal["huber", "l2"] = "huber"
    """Distance between student and target: pseudo-Huber ``sqrt(d^2 + c^2) - c`` or squared error."""
    huber_c: float = 0.001
    """The pseudo-Huber constant c."""
    target_ema: float = 0.95
    """EMA decay of the target network after each student update (0: the target is a copy of the student)."""
    timestep_scaling: float = 10.0
    """LCM's boundary-condition timestep scaling (the export's LCMScheduler uses the same value)."""
    lora_rank: int = 0
    """LoRA rank of the student's adapters; 0 trains the full UNet."""
    lora_alpha: float | None = None
    """LoRA alpha (adapter scale alpha / rank); None means equal to the rank."""
    time_cond_proj_dim: int = 256
    """Width of the w-embedding added to the student's time embedding (guidance "embedding")."""

    def check(self, path: str) -> None:
        """UserErrors naming the key for out-of-range or incompatible settings."""
        check_choice(key_path(path, "guidance"), self.guidance, ("embedding", "fixed"))
        check_choice(key_path(path, "loss"), self.loss, ("huber", "l2"))
        check_range(key_path(path, "num_ddim_timesteps"), self.num_ddim_timesteps, 1)
        if self.w_min > self.w_max:
            raise UserError(f"{key_path(path, 'w_min')} ({self.w_min:g}) must not exceed {key_path(path, 'w_max')} "
                            f"({self.w_max:g})")
        if not 0.0 <= self.target_ema < 1.0:
            raise UserError(f"{key_path(path, 'target_ema')} must be in [0, 1), got {self.target_ema:g}")
        if self.huber_c <= 0:
            raise UserError(f"{key_path(path, 'huber_c')} must be > 0, got {self.huber_c:g}")
        check_range(key_path(path, "lora_rank"), self.lora_rank, 0)
        if self.lora_rank > 0 and self.guidance == "embedding":
            raise UserError(f"{key_path(path, 'lora_rank')} > 0 needs {key_path(path, 'guidance')} 'fixed': a LoRA "
                            "loaded onto the teacher's stock UNet cannot carry a w-embedding")

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The LCM recipe on ``model``, and how its student is exported and sampled."""
        recipe = LCMRecipe(model, self)
        sampling = StudentSampling("lcm", self.num_ddim_timesteps, self.timestep_scaling)
        guidance = (self.w_min + self.w_max) / 2 if self.guidance == "embedding" else 0.0
        return BoundRecipe(recipe, recipe.models.student_unet, sampling, self.num_ddim_timesteps, 4, guidance)


@dataclass(frozen=True)
class SkippingSteps:
    """LCM's skipping-step grid: start timesteps ``t_{n+k}`` are the timesteps ``LCMSchedule`` (hence the
    exported LCMScheduler) samples from; each steps ``k = T // N`` down, clamped at timestep 0."""

    alphas_cumprod: Tensor
    """Cumulative alpha product per training timestep, (T,)."""
    num_ddim_timesteps: int
    """Grid size N."""

    def __post_init__(self) -> None:
        T = self.alphas_cumprod.shape[0]
        if not 1 <= self.num_ddim_timesteps <= T:
            raise UserError(f"num_ddim_timesteps must be in [1, {T}] for this teacher, got {self.num_ddim_timesteps}")

    @property
    def skip(self) -> int:
        return self.alphas_cumprod.shape[0] // self.num_ddim_timesteps

    @property
    def start_timesteps(self) -> np.ndarray:
        """The grid, low to high: ``k - 1, 2k - 1, ..., N k - 1``."""
        return LCMSchedule(self.alphas_cumprod, self.num_ddim_timesteps).timesteps(self.num_ddim_timesteps)[::-1]

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` uniform grid points: (start timesteps t_{n+k}, end timesteps t_n), int64."""
        index = torch.randint(0, self.num_ddim_timesteps, (n,), generator=generator)
        start = torch.from_numpy(self.start_timesteps.copy())[index]
        return start, (start - self.skip).clamp(min=0)

    def sigmas(self, timesteps: Tensor) -> Tensor:
        """Canonical sigma of each (integer) timestep, float64."""
        return vp_sigmas_from_alphas_cumprod(self.alphas_cumprod)[timesteps]


@dataclass
class GuidedTeacher:
    """Classifier-free guidance with a per-sample scale ``w`` (B,), by diffusers' rule (``w <= 1``: the
    conditional prediction alone), so ``w`` fixed equals ``CFGDenoiser``. One batched call for both branches."""

    inner: Denoiser
    uncond: TextCondition
    scale: Tensor

    def __call__(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        w = self.scale.to(device=x.device, dtype=x.dtype)
        if not bool((w > 1).any()):
            return self.inner(x, sigma, cond)
        sig = torch.as_tensor(sigma, device=x.device)
        sig2 = torch.cat([sig, sig]) if sig.ndim else sig
        x0_uncond, x0_cond = self.inner(torch.cat([x, x]), sig2, self.uncond.cat(cond)).chunk(2)
        w = expand_sigma(w.clamp(min=1.0), x)
        return x0_uncond + w * (x0_cond - x0_uncond)


def consistency_distance(prediction: Tensor, target: Tensor, kind: str = "huber", c: float = 0.001) -> Tensor:
    """Mean pseudo-Huber ``sqrt(d^2 + c^2) - c`` (LCM's choice: L2-like below c, L1-like above, so rare
    large errors do not dominate) or mean squared error, over all elements."""
    diff = prediction.float() - target.float()
    if kind == "huber":
        return ((diff.pow(2) + c * c).sqrt() - c).mean()
    if kind == "l2":
        return diff.pow(2).mean()
    raise ValueError(f"unknown consistency loss {kind!r}; choose one of huber, l2")


def guidance_student(teacher_unet: nn.Module, time_cond_proj_dim: int) -> nn.Module:
    """The teacher's UNet class and config plus a w-embedding (``time_cond_proj_dim``), with the teacher's
    weights. The new ``time_embedding.cond_proj`` starts at zero, so the student starts equal to the
    teacher at every guidance scale. A teacher that already has a w-embedding is simply copied."""
    if teacher_unet.config.time_cond_proj_dim is not None:
        return copy.deepcopy(teacher_unet)
    student = type(teacher_unet).from_config(teacher_unet.config, time_cond_proj_dim=time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if set(missing) != {"time_embedding.cond_proj.weight"} or unexpected:
        raise ValueError(f"teacher weights do not fit the w-embedding student: missing {missing}, "
                         f"unexpected {unexpected}")
    nn.init.zeros_(student.time_embedding.cond_proj.weight)
    student.to(teacher_unet.device)
    dtype = network_dtype(teacher_unet)
    return student if network_dtype(student) == dtype else student.to(dtype)


def lcm_models(model: TextToImageModel, config: LCMConfig) -> TeacherStudent:
    """The teacher plus the student ``config`` asks for: LoRA adapters on a teacher copy (``lora_rank > 0``),
    a w-embedding UNet (guidance "embedding"), or a plain copy (guidance "fixed")."""
    teacher_unet = model.network
    if config.lora_rank > 0:
        student = lora_student(teacher_unet, config.lora_rank, config.lora_alpha)
    elif config.guidance == "embedding":
        student = guidance_student(teacher_unet, config.time_cond_proj_dim)
    else:
        student = copy.deepcopy(teacher_unet)
    return TeacherStudent(model, student)


class LCMRecipe:
    """Consistency distillation of ``model`` with one phase, ``student``; the EMA target follows it in
    ``after_update``."""

    def __init__(self, model: TextToImageModel, config: LCMConfig):
        check_config(config, config.KIND)
        self.models, self.config = lcm_models(model, config), config
        self.grid = SkippingSteps(model.alphas_cumprod, config.num_ddim_timesteps)
        student = self.models.student_unet
        if config.lora_rank > 0:
            self.trainable = mark_only_lora_trainable(student)  # TeacherStudent made everything trainable
        else:
            self.trainable = [p for p in student.parameters() if p.requires_grad]
        if config.guidance == "embedding" and student.config.time_cond_proj_dim is None:
            raise ValueError("guidance 'embedding' needs a student with time_cond_proj_dim (see guidance_student)")
        self.target_unet = copy.deepcopy(student).eval().requires_grad_(False)

    # --- the Recipe protocol ------------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        return [Phase("student", self.trainable)]

    def modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.models.teacher_unet, "student": self.models.student_unet,
                "target": self.target_unet}

    def ema_module(self) -> str | None:
        return "student"

    @torch.no_grad()
    def after_update(self, update: Update) -> None:
        """``target = decay * target + (1 - decay) * student`` over the trainable weights (the rest is
        frozen and equal in both); decay 0 copies."""
        decay = self.config.target_ema
        pairs = zip(self.target_unet.parameters(), self.models.student_unet.parameters())
        for target, online in pairs:
            if not online.requires_grad:
                continue
            if decay == 0:
                target.copy_(online)
            else:
                target.lerp_(online.to(target.dtype), 1 - decay)

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if batch.latents is None:
            raise ValueError("LCM distillation trains on real latents: the batch has none")
        x0 = batch.latents
        t_start, t_end = self.grid.draw(x0.shape[0], generator)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        w = self.draw_guidance(x0.shape[0], generator)
        sigma, sigma_next = (self.grid.sigmas(t).to(x0.device) for t in (t_start, t_end))
        x = x0 + expand_sigma(sigma, x0) * eps
        prediction = self.consistency_fn(self.models.student_unet, w)(x, sigma, batch.cond)
        with torch.no_grad():
            x_next = self.teacher_step(batch, x, sigma, sigma_next, w)
            target = self.consistency_fn(self.target_unet, w)(x_next, sigma_next, batch.cond)
        total = consistency_distance(prediction, target, self.config.loss, self.config.huber_c)
        mse = (prediction.detach().float() - target.float()).pow(2).mean().item()
        return Loss(total, {"mse": mse})

    # --- pieces (public for tests and evaluation) ---------------------------------------------------

    def draw_guidance(self, n: int, generator: torch.Generator) -> Tensor:
        """Per-sample guidance scales: uniform in [w_min, w_max] (embedding) or the fixed scale."""
        if self.config.guidance == "fixed":
            return torch.full((n,), float(self.config.guidance_scale))
        u = torch.rand(n, generator=generator)
        return self.config.w_min + (self.config.w_max - self.config.w_min) * u

    def consistency_fn(self, unet: nn.Module, w: Tensor) -> LCMBoundaryDenoiser:
        """``unet`` (student or target) as LCM's consistency function, told the scale ``w`` if it embeds it."""
        guidance = w if self.config.guidance == "embedding" else 1.0
        return self.models.model.denoiser(guidance, len(w), network=unet, boundary=self.config.timestep_scaling)

    def teacher_step(self, batch: DistillBatch, x: Tensor, sigma: Tensor, sigma_next: Tensor, w: Tensor) -> Tensor:
        """The skipping-step solver: one guided deterministic DDIM step of the teacher, per sample."""
        teacher = GuidedTeacher(self.models.teacher(), batch.uncond, w)
        return ddim_step(teacher, x, sigma, sigma_next, batch.cond)
