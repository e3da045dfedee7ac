"""Architecture compression by knowledge distillation: a UNet with fewer blocks learns from its teacher.

KOALA (Lee et al. 2024, "KOALA: Empirical Lessons Toward Memory-Efficient and Fast Diffusion Models for
Text-to-Image Synthesis", arXiv 2312.04005; code: github.com/youngwanLEE/sdxl-koala) compresses SDXL's UNet and
distils it with three terms, after BK-SDM (Kim et al. 2023, arXiv 2305.15798; code: github.com/Nota-NetsPresso/
BK-SDM):

    L = L_task + lambda_out * L_outKD + lambda_feat * L_featKD

``L_task`` is the denoising loss on real data, ``L_outKD`` the distance between student and teacher outputs on
the same noised input, ``L_featKD`` the distance between their features at matched sites (``distill/features``).
BK-SDM matches whole-block outputs; KOALA's lesson is that self-attention outputs are the features to match.
This recipe offers both, cross-attention outputs, or none, and measures them in miniature
(``benchmarks/step_distillation.py --koala-sites``).

Units: all three terms are in canonical x0 units (``D(x, sigma) -> x0``) with Min-SNR weights for the two
output terms (the shapes teacher's own training loss; BK-SDM's epsilon MSE is the "eps" weighting); features are
compared by plain mean squared error, averaged over sites (BK-SDM, KOALA). The student samples exactly as the
teacher does: the export keeps the teacher's scheduler and swaps only the UNet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.losses import loss_weights, weighted_mse
from gendistill.distill.compression import StudentArchitecture, compressed_unet
from gendistill.distill.export import StudentSampling
from gendistill.distill.features import FEATURE_SITES, FeatureSite, FeatureTap, feature_loss, feature_sites
from gendistill.distill.models import DistillBatch, TeacherStudent, noised_real_latents
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update

Weighting = Literal["x0", "eps", "v", "min_snr"]


@dataclass
class KoalaConfig:
    """Distil the teacher into a UNet with fewer blocks (KOALA / BK-SDM knowledge distillation)."""

    KIND: ClassVar[str] = "koala"

    architecture: StudentArchitecture = field(default_factory=lambda: StudentArchitecture(remove_mid_block=True))
    """What the student leaves out of the teacher's UNet."""
    feature_site: FeatureSite = "self_attention"
    """Where features are matched: self_attention (KOALA), block (BK-SDM's stage outputs), cross_attention, none."""
    task_weight: float = 1.0
    """Weight of the denoising loss on real latents."""
    output_weight: float = 1.0
    """Weight of the output distillation (student vs teacher prediction on the same input)."""
    feature_weight: float = 1.0
    """Weight of the feature distillation (unused for feature_site none)."""
    weighting: Weighting = "min_snr"
    """Weighting of the two output terms in x0 units (see ``diffusion.losses.denoising_loss``)."""
    snr_gamma: float = 5.0
    """Min-SNR's gamma."""
    uncond_prob: float = 0.1
    """Share of rows on the empty prompt (keeps classifier-free guidance working)."""
    guidance_scale: float = 2.0
    """Guidance the student (like the teacher) is sampled with in the run's table."""
    sample_steps: int = 25
    """Steps of the table's headline row."""

    def check(self, path: str) -> None:
        self.architecture.check(key_path(path, "architecture"))
        check_choice(key_path(path, "feature_site"), self.feature_site, FEATURE_SITES)
        check_choice(key_path(path, "weighting"), self.weighting, ("x0", "eps", "v", "min_snr"))
        for name in ("task_weight", "output_weight", "feature_weight", "snr_gamma", "guidance_scale"):
            check_range(key_path(path, name), getattr(self, name), 0)
        check_range(key_path(path, "uncond_prob"), self.uncond_prob, 0.0, 1.0)
        check_range(key_path(path, "sample_steps"), self.sample_steps, 1)

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The recipe on ``model``; the exported student keeps the teacher's scheduler."""
        recipe = KoalaRecipe(model, self)
        return BoundRecipe(recipe, recipe.models.student_unet, StudentSampling("ddim"), 1000, self.sample_steps,
                           self.guidance_scale, pipeline_builder=teacher_scheduler_pipeline)


def teacher_scheduler_pipeline(teacher_pipe, student_unet: nn.Module, scheduler) -> object:
    """The teacher's pipeline class and components with the student UNet; the teacher's own scheduler (the
    student is a drop-in replacement, sampled as the teacher is)."""
    return type(teacher_pipe)(**{**teacher_pipe.components, "unet": student_unet})


class KoalaRecipe:
    """One phase, ``student``: task + output distillation + feature distillation on noised real latents."""

    def __init__(self, model: TextToImageModel, config: KoalaConfig):
        check_config(config, config.KIND)
        student, self.layer_map = compressed_unet(model.network, config.architecture)
        self.models, self.config = TeacherStudent(model, student), config
        self.sites = feature_sites(student, self.models.teacher_unet, self.layer_map, config.feature_site)
        self.student_tap = FeatureTap(student, [s.student for s in self.sites])
        self.teacher_tap = FeatureTap(self.models.teacher_unet, [s.teacher for s in self.sites])

    def phases(self) -> list[Phase]:
        return [Phase("student", list(self.models.student_unet.parameters()))]

    def modules(self) -> dict[str, nn.Module]:
        return {"teacher": self.models.teacher_unet, "student": self.models.student_unet}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        pass

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        data = noised_real_latents(self.models, batch, self.config.uncond_prob, generator, "KOALA's task loss")
        x0, sigma, cond, x = data.x0, data.sigma, data.cond, data.x
        with torch.no_grad(), self.teacher_tap.reading() as teacher_features:
            teacher_x0 = self.models.teacher()(x, sigma, cond)
        with self.student_tap.reading() as student_features:
            student_x0 = self.models.student()(x, sigma, cond)
        weights = loss_weights(sigma, self.config.weighting, self.config.snr_gamma)
        task = weighted_mse(student_x0, x0, weights)
        output = weighted_mse(student_x0, teacher_x0, weights)
        features = feature_loss(student_features, teacher_features, self.sites)
        c = self.config
        total = c.task_weight * task + c.output_weight * output
        terms = {"task": task.item(), "out_kd": output.item()}
        if features is not None:
            total = total + c.feature_weight * features
            terms["feat_kd"] = features.item()
        return Loss(total, terms)
