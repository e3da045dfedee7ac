"""CSD: classifier score distillation (Yu et al. 2023), with its negative-prompt form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.losses import dm_gradient
from gendistill.diffusion.ramps import LinearRamp
from gendistill.diffusion.timesteps import TimestepPolicy, TimestepRange
from gendistill.errors import check_choice, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, no_phase, weighted
from gendistill.score.teacher import Teacher


@dataclass
class CSDConfig:
    """Classifier score distillation (Yu et al. 2023): only the classifier term eps_c - eps_u."""

    KIND: ClassVar[str] = "csd"

    guidance_weight: float = 1.0
    """w_pos, the weight of eps_c - eps_u (the paper's code: 1; scale the learning rate instead)."""
    negative_prompt: str = ""
    """Negative prompt whose classifier score eps_n - eps_u is subtracted; empty: no negative term."""
    negative_weight: LinearRamp = field(default_factory=lambda: LinearRamp(1.0, 1.0))
    """w_neg over training (the paper's Stable Diffusion config: 1 -> 0.5 over 10k steps)."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t)."""
    timesteps: TimestepPolicy = field(default_factory=TimestepRange)
    """Which training timesteps each step uses (fractions of T; ``kind:`` range, annealed_max or decreasing)."""

    def check(self, path: str) -> None:
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)

    def build(self, model: TextToImageModel) -> CSD:
        """CSD with ``model`` (any VP or flow pipeline) as the teacher."""
        return CSD(model, self)


class CSD:
    """``grad = w(t) [w_pos (eps_c - eps_u) - w_neg(step) (eps_n - eps_u)]`` (no ``- eps`` term)."""

    def __init__(self, model: TextToImageModel, config: CSDConfig):
        check_config(config, config.KIND)
        self.teacher, self.config = Teacher(model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        c, n = self.config, len(prompts)
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        conds = [self.teacher.unconditional(n), self.teacher.conditions(prompts)]
        w_neg = c.negative_weight.value(step) if c.negative_prompt else 0.0
        if w_neg != 0.0:
            conds.append(self.teacher.negative(c.negative_prompt, n))
        d = self.teacher.branches(noised.x, noised.sigma, conds)
        real = d[0] + c.guidance_weight * (d[1] - d[0])
        if w_neg != 0.0:
            real = real - w_neg * (d[2] - d[0])
        grad = dm_gradient(latents, real, d[0], noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised,
                                   {"negative_weight": w_neg})

    def extra_phases(self) -> list[Phase]:
        """None: the teacher's own scores are the fake score."""
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase("csd", name)

    def modules(self) -> dict[str, nn.Module]:
        return {}
