"""Attention Distillation as guidance inside a sampler: the paper's "improved classifier guidance"
(Zhou et al., CVPR 2025, arXiv 2502.20235, Sec. 3.3; reference code github.com/xugao97/AttentionDistillation).

After each DDIM step (with CFG) has made ``z_{t'}``, the reference latent is noised to ``t'`` with fresh noise,
optionally ``z_{t'}`` is renormalised per channel to that noised reference's mean and std (AdaIN), and a few
gradient steps of the AD loss (``attention_distillation.ad_loss``: the UNet run on ``z_{t'}`` at ``t'`` with the
empty prompt, against the noised reference's keys and values) move ``z_{t'}``. The reference code runs Adam
(lr 0.015, 2-3 iterations) on the latent there; the project keeps every optimiser on the trainer, so this is
guidance, as classifier guidance is: a fixed number of steps ``z <- z - lr * g / rms(g)`` on the state (the
RMS-normalised gradient makes a step of about ``lr`` per element, as Adam's first steps do). Nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.adapters import SigmaToTimestep
from gendistill.errors import check_range, key_path
from gendistill.score.attention_distillation import ADLossConfig, StyleLoss
from gendistill.score.base import randn


@dataclass
class SamplerGuidanceConfig:
    """Attention-distillation guidance inside the sampler: its step size, steps per sampler step and AdaIN."""

    lr: float = 0.015
    """Step size of each normalised gradient step on the latent (0: the plain sampler)."""
    steps: int = 2
    """Gradient steps after each sampler step (the reference code: 2-3 Adam iterations)."""
    adain: bool = False
    """Renormalise the latent per channel to the noised reference's mean and std before the gradient steps."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "lr"), self.lr, 0.0)
        check_range(key_path(path, "steps"), self.steps, 0)


class AttentionGuide:
    """``guide(index, x, sigma_next) -> x`` for ``diffusion.samplers.sample_euler``'s ``guide``: canonical
    ``x`` (``x0 + sigma eps``) moved toward the reference's attention (see the module docstring)."""

    def __init__(self, model: TextToImageModel, loss: ADLossConfig, config: SamplerGuidanceConfig,
                 reference: Tensor, generator: torch.Generator):
        self.style = StyleLoss(model, loss)
        self.config, self.generator = config, generator
        self.reference = reference.detach().float()
        self.sigma_to_t = SigmaToTimestep(model.alphas_cumprod)
        self.trace: list[dict[str, float]] = []
        """Per guided step: index, t and the AD loss before the gradient steps."""

    def __call__(self, index: int, x: Tensor, sigma_next: float) -> Tensor:
        c = self.config
        if sigma_next <= 0 or not (c.adain or (c.lr > 0 and c.steps > 0)):
            return x
        scale = (1 + sigma_next**2) ** 0.5
        t = float(self.sigma_to_t(torch.tensor([sigma_next]))[0])
        reference = self.reference.to(x).expand(x.shape[0], -1, -1, -1)
        noised = (reference + sigma_next * randn(reference.shape, self.generator, reference)) / scale
        z = x.detach().float() / scale
        if c.adain:
            z = adain(z, noised)
        features, _ = self.style.references(noised, None, t)
        for k in range(c.steps):
            z = z.detach().requires_grad_(True)
            with torch.enable_grad():
                loss, terms = self.style.loss(z, t, features, None)
                (grad,) = torch.autograd.grad(loss, z)
            if k == 0:
                self.trace.append({"step": index, "t": t / self.style.teacher.num_train_timesteps, **terms})
            z = z.detach() - c.lr * grad / grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        return (z * scale).to(x.dtype)


def adain(z: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """``z`` with each channel's spatial mean and std replaced by ``style``'s (adaptive instance norm)."""
    mean, std = z.mean(dim=(2, 3), keepdim=True), z.std(dim=(2, 3), keepdim=True)
    s_mean, s_std = style.mean(dim=(2, 3), keepdim=True), style.std(dim=(2, 3), keepdim=True)
    return (z - mean) / (std + eps) * s_std + s_mean
