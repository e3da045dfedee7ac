"""SDS: score distillation sampling (DreamFusion, Poole et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.losses import dm_gradient
from gendistill.diffusion.timesteps import TimestepPolicy, TimestepRange
from gendistill.errors import check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, no_phase, weighted
from gendistill.score.teacher import Teacher


@dataclass
class SDSConfig:
    """Score distillation sampling (DreamFusion): the guided teacher's noise prediction minus the noise."""

    KIND: ClassVar[str] = "sds"

    guidance_scale: float = 100.0
    """CFG scale of the real score (DreamFusion: 100); <= 1 uses the conditional prediction alone."""
    guidance_rescale: float = 0.0
    """Guidance rescale (Lin et al. 2023) in [0, 1]; 0 turns it off."""
    negative_prompt: str = ""
    """Takes the empty prompt's place in CFG, as diffusers' negative prompt; empty: unconditional."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t: the gradient is the x0 residual)."""
    timesteps: TimestepPolicy = field(default_factory=TimestepRange)
    """Which training timesteps each step uses (fractions of T; ``kind:`` range, annealed_max or decreasing)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "guidance_rescale"), self.guidance_rescale, 0.0, 1.0)
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)

    def build(self, model: TextToImageModel) -> SDS:
        """SDS with ``model`` (any VP or flow pipeline, distilled students included) as the teacher."""
        return SDS(model, self)


class SDS:
    """``grad = w(t) (eps_hat(x_t; y) - eps)`` with ``eps_hat`` the teacher's CFG prediction."""

    def __init__(self, model: TextToImageModel, config: SDSConfig):
        check_config(config, config.KIND)
        self.teacher, self.config = Teacher(model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        c = self.config
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        real_score = self.teacher.guided(len(prompts), c.guidance_scale, c.guidance_rescale, c.negative_prompt)
        with torch.no_grad():
            real = real_score(noised.x, noised.sigma, self.teacher.conditions(prompts))
        grad = dm_gradient(latents, real, latents, noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised, {})

    def extra_phases(self) -> list[Phase]:
        """None: the injected noise is SDS's fake score."""
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase("sds", name)

    def modules(self) -> dict[str, nn.Module]:
        return {}
