"""What every step-distillation recipe works with: a frozen teacher UNet, a trainable student UNet, their
shared VP schedule, and batches of encoded prompts (plus real latents where a recipe wants data).

Recipes stay in canonical units: ``teacher()`` and ``student()`` are ``VPDenoiser``s, and the student's
few-step timesteps come from ``LCMSchedule`` (what the exported LCMScheduler will visit) or, for
progressive distillation, ``DiscreteVPSchedule`` with trailing spacing (what DDIMScheduler will visit).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.diffusion.adapters import VPDenoiser
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.schedules import vp_sigmas_from_alphas_cumprod


@dataclass
class DistillBatch:
    """One training batch: prompts encoded by the frozen text encoder, and optional real latents."""

    prompts: list[str]
    cond: TextCondition
    """The prompts' condition, (B, L, D)."""
    uncond: TextCondition
    """The empty prompt's condition, batched like ``cond`` (for classifier-free guidance)."""
    latents: Tensor | None = None
    """Real data in the teacher's latent space (already times the VAE scaling factor), (B, C, h, w)."""

    @property
    def size(self) -> int:
        return self.cond.batch_size


class TeacherStudent:
    """A frozen teacher UNet and a trainable student UNet on the same VP schedule.

    The student starts as a copy of the teacher (``student_unet=None``), or is the caller's module
    (e.g. the teacher with peft LoRA adapters, or a UNet with a guidance embedding).
    """

    def __init__(self, teacher_unet: nn.Module, alphas_cumprod: Tensor, prediction: str = "epsilon",
                 student_unet: nn.Module | None = None, latent_shape: tuple[int, int, int] | None = None):
        self.teacher_unet = teacher_unet.eval().requires_grad_(False)
        self.student_unet = student_unet if student_unet is not None else copy.deepcopy(teacher_unet)
        self.student_unet.train().requires_grad_(True)
        self.alphas_cumprod = alphas_cumprod
        self.prediction = prediction
        if latent_shape is None:
            cfg = teacher_unet.config
            latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        self.latent_shape = latent_shape

    @property
    def train_sigmas(self) -> Tensor:
        """Sigma of each training timestep, (T,), float64."""
        return vp_sigmas_from_alphas_cumprod(self.alphas_cumprod)

    @property
    def sigma_max(self) -> float:
        return float(self.train_sigmas[-1])

    def teacher(self) -> VPDenoiser:
        return VPDenoiser(self.teacher_unet, self.alphas_cumprod, self.prediction)

    def teacher_cfg(self, batch: DistillBatch, scale: float) -> CFGDenoiser:
        """The teacher with classifier-free guidance against the empty prompt."""
        return CFGDenoiser(self.teacher(), batch.uncond, scale)

    def student(self, timestep_cond: Tensor | None = None) -> VPDenoiser:
        return VPDenoiser(self.student_unet, self.alphas_cumprod, self.prediction, timestep_cond)

    def noise(self, batch_size: int, generator: torch.Generator, device=None) -> Tensor:
        """Standard normal latents of the student's shape, drawn from ``generator``."""
        return torch.randn((batch_size, *self.latent_shape), generator=generator, device=device)
