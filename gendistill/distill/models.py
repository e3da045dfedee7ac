"""What every step-distillation recipe works with: the teacher's ``TextToImageModel``, a trainable student
network, and batches of encoded prompts (plus real latents where a recipe wants data).

Recipes receive the model, not its parts: every network (teacher, student, fake score, a stage teacher) gets its
denoiser from ``model.denoiser(network=...)``, so each runs on the teacher's schedule and prediction type.
Recipes stay in canonical units; the student's few-step timesteps come from ``LCMSchedule`` (what the exported
LCMScheduler will visit) or, for progressive distillation, ``DiscreteVPSchedule`` with trailing spacing (what
DDIMScheduler will visit).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import Boundary, TextToImageModel
from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.errors import UserError


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
    """The teacher ``model`` (its network frozen) and a trainable student network on its schedule.

    The student starts as a copy of the teacher's network (``student_unet=None``), or is the caller's module
    (e.g. the teacher with peft LoRA adapters, or a UNet with a guidance embedding).
    """

    def __init__(self, model: TextToImageModel, student_unet: nn.Module | None = None):
        if model.family != "vp":
            raise UserError("step distillation needs a UNet teacher (Stable Diffusion 1.x/2.x/XL-style)")
        self.model = model
        self.teacher_unet = model.network.eval().requires_grad_(False)
        self.student_unet = student_unet if student_unet is not None else copy.deepcopy(self.teacher_unet)
        self.student_unet.train().requires_grad_(True)
        cfg = self.teacher_unet.config
        self.latent_shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.model.alphas_cumprod

    @property
    def train_sigmas(self) -> Tensor:
        """Sigma of each training timestep, (T,), float64."""
        return self.model.train_sigmas

    @property
    def sigma_max(self) -> float:
        return float(self.train_sigmas[-1])

    def teacher(self) -> nn.Module:
        """The teacher's own denoiser (``model.denoiser()``)."""
        return self.model.denoiser()

    def teacher_cfg(self, batch: DistillBatch, scale: float) -> CFGDenoiser:
        """The teacher with classifier-free guidance against the empty prompt."""
        return CFGDenoiser(self.teacher(), batch.uncond, scale)

    def student(self, guidance: float | Tensor = 1.0, boundary: Boundary = None) -> nn.Module:
        """The student network's denoiser on the teacher's schedule (``guidance`` is embedded if it has a
        w-embedding; ``boundary`` is LCM's boundary condition, none by default)."""
        return self.model.denoiser(guidance, network=self.student_unet, boundary=boundary)

    def noise(self, batch_size: int, generator: torch.Generator, device=None) -> Tensor:
        """Standard normal latents of the student's shape, drawn from ``generator``."""
        return torch.randn((batch_size, *self.latent_shape), generator=generator, device=device)


@dataclass
class NoisedLatents:
    """Real latents noised at random training timesteps, with each row's condition (some on the empty prompt)."""

    x0: Tensor
    sigma: Tensor
    """(B,)"""
    eps: Tensor
    cond: TextCondition

    @property
    def x(self) -> Tensor:
        return self.x0 + expand_sigma(self.sigma, self.x0) * self.eps


def noised_real_latents(models: TeacherStudent, batch: DistillBatch, uncond_prob: float, generator: torch.Generator,
                        recipe: str) -> NoisedLatents:
    """Draw, in this order, a training timestep per row, the noise, and which rows use the empty prompt
    (probability ``uncond_prob``); ``recipe`` names who needs the latents in the error without them."""
    if batch.latents is None:
        raise ValueError(f"{recipe} trains on real latents: set data.with_latents")
    x0 = batch.latents
    sigma, eps = draw_sigma_and_noise(models, x0, generator)
    drop = torch.rand(x0.shape[0], generator=generator) < uncond_prob
    return NoisedLatents(x0, sigma, eps, mix_rows(batch.cond, batch.uncond, drop.to(x0.device)))


def draw_sigma_and_noise(models: TeacherStudent, x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A uniform training timestep's sigma per row of ``x0`` (B,), then standard normal noise like ``x0``; both
    on ``x0``'s device and dtype, drawn in that order from ``generator``."""
    sigmas = models.train_sigmas
    t = torch.randint(0, len(sigmas), (x0.shape[0],), generator=generator)
    sigma = sigmas[t].to(device=x0.device, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return sigma, eps


def mix_rows(cond: TextCondition, uncond: TextCondition, use_uncond: torch.Tensor) -> TextCondition:
    """``cond`` with the rows where ``use_uncond`` is set taken from ``uncond``."""
    def pick(a, b):
        if a is None:
            return None
        mask = use_uncond.view(-1, *([1] * (a.ndim - 1)))
        return torch.where(mask, b.to(a.dtype), a)

    return TextCondition(pick(cond.embeds, uncond.embeds), pick(cond.pooled, uncond.pooled),
                         pick(cond.time_ids, uncond.time_ids))


def load_student_weights(unet: nn.Module, folder: str) -> None:
    """Copy the UNet weights of the diffusers folder ``folder`` into ``unet`` (same architecture required)."""
    from diffusers import UNet2DConditionModel

    from gendistill.shipped import resolve_model_name

    source = UNet2DConditionModel.from_pretrained(resolve_model_name(folder), subfolder="unet")
    try:
        unet.load_state_dict(source.state_dict())
    except RuntimeError as err:  # missing, unexpected or differently shaped weights
        raise UserError(f"student_init {folder!r} has another UNet architecture than the teacher's: "
                        f"{str(err).splitlines()[0]}") from None
