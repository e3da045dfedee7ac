"""Plain diffusion fine-tuning of the teacher's network, full or LoRA, on the run's data: the "differently
fine-tuned copy" that LCM-LoRA's users apply their LoRA to, and the base of LoRA-style controls.

The loss is the standard denoising objective in canonical units, ``||D(x0 + sigma * eps) - x0||^2`` with
Min-SNR-gamma weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): in x0
units ``min(1 / sigma^2, gamma)``, which is the shapes teacher's own training loss (v-prediction with Min-SNR,
``domains/shapes/teacher_recipes.loss_weights``) rewritten in x0 units. Timesteps are drawn uniformly among the
training timesteps; a share of rows trains on the empty prompt so classifier-free guidance keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from gendistill.backends.lora import lora_student, mark_only_lora_trainable
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.losses import denoising_loss
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent, noised_real_latents
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update


@dataclass
class FineTuneConfig:
    """Fine-tune the teacher's UNet (``lora_rank`` 0) or LoRA adapters on it with the denoising loss."""

    KIND: ClassVar[str] = "finetune"

    lora_rank: int = 0
    """LoRA rank of the adapters; 0 fine-tunes the whole UNet."""
    lora_alpha: float | None = None
    """LoRA alpha (None: equal to the rank)."""
    weighting: Literal["x0", "eps", "v", "min_snr"] = "min_snr"
    """Loss weighting in x0 units (see ``diffusion.losses.denoising_loss``)."""
    snr_gamma: float = 5.0
    """Min-SNR's gamma."""
    uncond_prob: float = 0.1
    """Share of rows trained on the empty prompt (keeps classifier-free guidance working)."""
    guidance_scale: float = 2.0
    """Guidance the fine-tune is sampled with in the run's table."""
    sample_steps: int = 25
    """Steps of the table's headline row."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "lora_rank"), self.lora_rank, 0)
        check_choice(key_path(path, "weighting"), self.weighting, ("x0", "eps", "v", "min_snr"))
        check_range(key_path(path, "snr_gamma"), self.snr_gamma, 0)
        check_range(key_path(path, "uncond_prob"), self.uncond_prob, 0.0, 1.0)
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0)
        check_range(key_path(path, "sample_steps"), self.sample_steps, 1)

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The recipe on ``model``; the result samples as the teacher does (trailing DDIM)."""
        recipe = FineTuneRecipe(model, self)
        return BoundRecipe(recipe, recipe.models.student_unet, StudentSampling("ddim"), 1000, self.sample_steps,
                           self.guidance_scale)


class FineTuneRecipe:
    """One phase, ``student``: the denoising loss on real latents."""

    def __init__(self, model: TextToImageModel, config: FineTuneConfig):
        check_config(config, config.KIND)
        student = lora_student(model.network, config.lora_rank, config.lora_alpha) if config.lora_rank else None
        self.models, self.config = TeacherStudent(model, student), config
        unet = self.models.student_unet
        self.trainable = mark_only_lora_trainable(unet) if config.lora_rank else list(unet.parameters())

    def phases(self) -> list[Phase]:
        return [Phase("student", self.trainable)]

    def modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.models.teacher_unet, "student": self.models.student_unet}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        pass

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        data = noised_real_latents(self.models, batch, self.config.uncond_prob, generator, "fine-tuning")
        total = denoising_loss(self.models.student(), data.x0, data.sigma, data.eps, data.cond, self.config.weighting,
                               self.config.snr_gamma)
        return Loss(total, {"mse": total.detach().item()})
