"""From a recipe config to a recipe, plus what export and evaluation need to know about its student."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from gendistill.distill.consistency import LCMConfig, LCMRecipe, lcm_models
from gendistill.distill.dmd import DMD2Config, DMD2Recipe
from gendistill.distill.export import StudentSampling
from gendistill.backends.lora import has_lora, merge_lora
from gendistill.distill.models import DistillBatch, TeacherStudent
from gendistill.distill.progressive import ProgressiveConfig, ProgressiveRecipe
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

    def export_unet(self, weights: nn.Module | None = None) -> nn.Module:
        """The UNet to save: ``weights`` (e.g. the EMA) or the student, with any LoRA merged in."""
        unet = weights if weights is not None else self.student_unet
        return merge_lora(unet) if has_lora(unet) else unet


def bind_recipe(config, teacher_unet: nn.Module, alphas_cumprod: Tensor, prediction: str,
                first_batch: Callable[[], DistillBatch]) -> BoundRecipe:
    """Build the recipe ``config`` names (``first_batch`` gives prompts for DMD's regression pairs)."""
    if isinstance(config, DMD2Config):
        models = TeacherStudent(teacher_unet, alphas_cumprod, prediction)
        prompts = first_batch() if config.regression_weight > 0 else None
        recipe = DMD2Recipe(models, config, prompts)
        sampling = StudentSampling("lcm", config.resolved_original_steps, config.timestep_scaling)
        return BoundRecipe(recipe, models.student_unet, sampling, config.resolved_original_steps,
                           config.student_steps, 0.0)
    if isinstance(config, LCMConfig):
        models = lcm_models(teacher_unet, alphas_cumprod, prediction, config)
        recipe = LCMRecipe(models, config)
        sampling = StudentSampling("lcm", config.num_ddim_timesteps, config.timestep_scaling)
        guidance = (config.w_min + config.w_max) / 2 if config.guidance == "embedding" else 0.0
        return BoundRecipe(recipe, models.student_unet, sampling, config.num_ddim_timesteps, 4, guidance)
    if isinstance(config, ProgressiveConfig):
        models = TeacherStudent(teacher_unet, alphas_cumprod, prediction)
        recipe = ProgressiveRecipe(models, config)
        return BoundRecipe(recipe, models.student_unet, StudentSampling("ddim"), 1000, config.final_steps, 0.0)
    raise TypeError(f"no recipe for config {type(config).__name__}")
