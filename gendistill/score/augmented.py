"""Augmented score distillation (ASDS): the inner guidance's gradient on a randomly warped and cropped copy of
each render.

DiffSketcher (Xing et al. 2023, "DiffSketcher: Text Guided Vector Sketch Synthesis through Latent Diffusion
Models", arXiv 2306.14685; code: ximinng/DiffSketcher) scores its strokes through a random perspective warp and
a random resized crop before the VAE encodes them, so that the strokes must read as the prompt from many
framings, not from one exact pixel grid. The gradient is then SDS's, ``(1 - abar_t)(eps_hat - eps)`` with
``eps_hat`` the teacher's CFG prediction, sent back through the (differentiable) augmentation to the render.

The wrapper draws the augmentation first, then the inner guidance draws its timesteps and noise, all from the
one generator. With an identity augmentation (``distortion: 0``, ``crop_scale: [1, 1]``, ``crop_ratio: [1, 1]``)
it draws nothing and is the inner guidance exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.render.augment import AugmentConfig, augment
from gendistill.score.base import GuidanceOutput, ScoreGuidance
from gendistill.score.sds import SDSConfig


def is_identity(config: AugmentConfig) -> bool:
    """Whether ``config`` leaves every image as it is (no warp; the crop is the whole square image)."""
    return config.distortion == 0 and tuple(config.crop_scale) == (1.0, 1.0) and tuple(config.crop_ratio) == (1.0, 1.0)


def sketch_augment() -> AugmentConfig:
    """DiffSketcher's augmentation: perspective distortion 0.5, a square crop of 70-90% of the area."""
    return AugmentConfig(distortion=0.5, crop_scale=(0.7, 0.9), crop_ratio=(1.0, 1.0))


@dataclass
class AugmentedSDSConfig:
    """ASDS (DiffSketcher): SDS on ``copies`` randomly warped and cropped copies of each render."""

    KIND: ClassVar[str] = "asds"

    sds: SDSConfig = field(default_factory=lambda: SDSConfig(guidance_scale=100.0))
    """The inner guidance (DiffSketcher: SDS weighting, CFG 100 on Stable Diffusion, t in [0.05, 0.95])."""
    augment: AugmentConfig = field(default_factory=sketch_augment)
    """The augmentation applied before encoding."""
    copies: int = 1
    """Augmented copies of each render per step (DiffSketcher: 1), each with its own draws."""
    probability: float = 1.0
    """Chance that a step augments (torchvision's ``p``); the other steps score the render as it is (1: always,
    and no draw is spent on the choice)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "copies"), self.copies, 1)
        check_range(key_path(path, "probability"), self.probability, 0.0, 1.0)

    def build(self, model: TextToImageModel) -> AugmentedGuidance:
        """ASDS with ``model`` as the teacher."""
        return AugmentedGuidance(self.sds.build(model), self.augment, self.copies, self.probability)


class AugmentedGuidance:
    """Any guidance, applied to augmented copies of the images (see the module docstring)."""

    def __init__(self, inner: ScoreGuidance, config: AugmentConfig, copies: int = 1, probability: float = 1.0):
        self.inner, self.config, self.copies, self.probability = inner, config, copies, probability

    def augmented(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``copies`` augmented copies of each image, (copies * B, 3, H, W), copy-major; differentiable."""
        batch = images.repeat(self.copies, 1, 1, 1) if self.copies > 1 else images
        if is_identity(self.config):
            return batch
        generator = _on_cpu(generator)
        if self.probability < 1 and torch.rand((), generator=generator).item() >= self.probability:
            return batch
        return augment(batch, self.config, generator)

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        copies = self.augmented(images, generator)
        features = None if camera_features is None else camera_features.repeat(self.copies, 1)
        # the surrogate's gradient is grad / (copies B) per copy: each image gets the mean over its copies, / B
        return self.inner.gradient(copies, list(prompts) * self.copies, step, total_steps, generator, features)

    def extra_phases(self) -> list[Phase]:
        return self.inner.extra_phases()

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        return self.inner.phase_loss(name, images, prompts, camera_features, generator)

    def modules(self) -> dict[str, nn.Module]:
        return self.inner.modules()


def _on_cpu(generator: torch.Generator) -> torch.Generator:
    """``augment`` draws on the CPU; a CUDA generator seeds a CPU one from one of its own draws."""
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)
