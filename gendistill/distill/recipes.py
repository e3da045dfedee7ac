"""What a distillation run needs to know about a built recipe's student (export, sampling, evaluation).

Each recipe config builds its own: ``config.build(model, first_batch) -> BoundRecipe`` (DMD2Config,
LCMConfig, ProgressiveConfig), so the run never branches on the recipe's kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from gendistill.backends.lora import has_lora, merge_lora, save_lora
from gendistill.distill.export import StudentSampling
from gendistill.recipe import Recipe


@dataclass
class BoundRecipe:
    """A recipe and the facts about its student that the run needs."""

    recipe: Recipe
    student_unet: nn.Module
    sampling: StudentSampling
    max_steps: int
    """The most steps the exported student can take (LCMScheduler cannot exceed its grid)."""
    default_steps: int
    """The steps the student was trained for (the table's headline row)."""
    guidance: float
    """Guidance scale to sample the student with (0: none; a w-embedding student: the embedded scale)."""
    pipeline_builder: Callable[[Any, nn.Module, Any], Any] | None = None
    """Builds the student's pipeline from (teacher pipeline, exported student module, scheduler); None: the
    teacher's pipeline class with the student as its ``unet`` (Phased DMD: one UNet per expert)."""

    def export_unet(self, weights: nn.Module | None = None) -> nn.Module:
        """The UNet to save: ``weights`` (e.g. the EMA) or the student, with any LoRA merged in."""
        unet = weights if weights is not None else self.student_unet
        return merge_lora(unet) if has_lora(unet) else unet

    def export_lora(self, out_dir: str | Path, weights: nn.Module | None = None,
                    pipeline_class: type | None = None) -> Path | None:
        """A LoRA student's adapters, of ``weights`` (e.g. the EMA) or the student, as
        ``out_dir/pytorch_lora_weights.safetensors``: stock ``pipe.load_lora_weights(out_dir)`` applies them to
        the teacher (giving the merged export) or to a fine-tune of it. None, writing nothing, for a student
        without LoRA."""
        unet = weights if weights is not None else self.student_unet
        return save_lora(unet, out_dir, pipeline_class) if has_lora(unet) else None
