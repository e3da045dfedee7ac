"""NPG: HumanGaussian's annealed negative prompt guidance (Liu et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import expand_sigma
from gendistill.diffusion.losses import dm_gradient
from gendistill.diffusion.ramps import LinearRamp
from gendistill.diffusion.timesteps import TimestepPolicy, TimestepRange, timestep_index
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, no_phase, weighted
from gendistill.score.teacher import Teacher

NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")
"""The negative prompt of noise-free score distillation (Katzir et al. 2023), which HumanGaussian's code uses."""


@dataclass
class NPGConfig:
    """Annealed negative prompt guidance (HumanGaussian): classifier score plus an annealed negative score."""

    KIND: ClassVar[str] = "npg"

    guidance_scale: float = 7.5
    """s, the weight of the classifier score eps_c - eps_u (HumanGaussian: 7.5)."""
    negative_prompt: str = NFSD_NEGATIVE_PROMPT
    """The prompt whose score is steered away from (must not be empty)."""
    negative_scale: LinearRamp = field(default_factory=lambda: LinearRamp(1.0, 1.0))
    """lambda over training, the weight of eps_u - eps_n (HumanGaussian: 1)."""
    negative_t_min: float = 0.2
    """The negative term is on only at timesteps >= this fraction of T (HumanGaussian: 200 of 1000)."""
    domain_score: Literal["nfsd", "sds"] = "nfsd"
    """Remaining term: "nfsd" (HumanGaussian's code: eps_u below negative_t_min, none above) or "sds"
    (eps_u - eps everywhere: SDS plus a negative term)."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t)."""
    timesteps: TimestepPolicy = field(default_factory=TimestepRange)
    """Which training timesteps each step uses (HumanGaussian anneals t_max from 0.98 to 0.5: AnnealedMax)."""

    def check(self, path: str) -> None:
        if not self.negative_prompt:
            raise UserError(f"{key_path(path, 'negative_prompt')} is empty: negative prompt guidance needs a "
                            "prompt to steer away from")
        check_range(key_path(path, "negative_t_min"), self.negative_t_min, 0.0, 1.0)
        check_choice(key_path(path, "domain_score"), self.domain_score, ("nfsd", "sds"))
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)

    def build(self, model: TextToImageModel) -> NegativePromptGuidance:
        """NPG with ``model`` (any VP or flow pipeline) as the teacher."""
        return NegativePromptGuidance(model, self)


class NegativePromptGuidance:
    """HumanGaussian's annealed negative prompt guidance (Liu et al. 2024). It splits the SDS score
    into a classifier score ``s (eps_c - eps_u)`` and a noisy domain score, and replaces the latter by the
    negative prompt's score ``eps_u - eps_n`` at large timesteps. With ``m(t) = [t >= negative_t_min]`` and
    ``lambda`` the annealed negative scale:

    - "nfsd" (HumanGaussian's released code, which cites noise-free score distillation, Katzir et al. 2023,
      eq. 6): ``grad = w(t) [s (eps_c - eps_u) + m lambda (eps_u - eps_n) + (1 - m) eps_u]``;
    - "sds": ``grad = w(t) [s (eps_c - eps_u) + m lambda (eps_u - eps_n) + (eps_u - eps)]``, i.e. SDS whose
      guided prediction has the extra term ``- m lambda (eps_n - eps_u)``. With ``lambda = s - 1`` and
      ``negative_t_min = 0`` this is SDS with the unconditional branch replaced by the negative prompt's.

    In x0 units both are one ``dm_gradient``: ``real = D_u + s (D_c - D_u) - m lambda (D_n - D_u)`` and
    ``fake = x0`` ("sds") or ``m D_u + (1 - m) x`` ("nfsd")."""

    def __init__(self, model: TextToImageModel, config: NPGConfig):
        check_config(config, config.KIND)
        self.teacher, self.config = Teacher(model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        c, n = self.config, len(prompts)
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        conds = [self.teacher.unconditional(n), self.teacher.conditions(prompts),
                 self.teacher.negative(c.negative_prompt, n)]
        d_u, d_c, d_n = self.teacher.branches(noised.x, noised.sigma, conds)
        lam = c.negative_scale.value(step)
        t_neg = timestep_index(c.negative_t_min, self.teacher.num_train_timesteps)
        m = expand_sigma((noised.t >= t_neg).to(device=latents.device, dtype=latents.dtype), latents)
        real = d_u + c.guidance_scale * (d_c - d_u) - m * lam * (d_n - d_u)
        fake = latents.detach() if c.domain_score == "sds" else m * d_u + (1 - m) * noised.x
        grad = dm_gradient(latents, real, fake, noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised,
                                   {"negative_scale": lam, "negative_on": m.mean().item()})

    def extra_phases(self) -> list[Phase]:
        """None: the teacher's own scores are the fake score."""
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase("npg", name)

    def modules(self) -> dict[str, nn.Module]:
        return {}
