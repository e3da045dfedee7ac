"""A reference-view reconstruction loss around any guidance: the image-to-3D baseline Isotropic3D argues
against (Liu et al. 2024, arXiv:2403.10395, Sec. 1 and 4: Zero-1-to-3 / Magic123-style pipelines add a hard
L2 loss between the render at the reference camera and the input image).

The job puts the reference camera first in every batch of views; this wrapper gives that view
``weight * mean((render - image)^2)`` and passes the other views to the wrapped guidance unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.recipe import Loss, Phase
from gendistill.score.base import GuidanceOutput, ScoreGuidance


class ReferenceViewLoss:
    """``inner`` on views 1..B-1, plus the weighted L2 of view 0 against ``image`` (3, H, W) in [0, 1]."""

    def __init__(self, inner: ScoreGuidance, image: Tensor, weight: float):
        self.inner, self.weight = inner, weight
        self.image = image.detach().float()

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        if images.shape[0] < 2:
            raise ValueError("a reference-view batch needs the reference view and at least one other")
        features = None if camera_features is None else camera_features[1:]
        out = self.inner.gradient(images[1:], list(prompts)[1:], step, total_steps, generator, features)
        target = self.image.to(images.device)
        if tuple(target.shape[-2:]) != tuple(images.shape[-2:]):
            target = F.interpolate(target[None], images.shape[-2:], mode="bilinear", align_corners=False,
                                   antialias=True)[0]
        reconstruction = (images[0] - target).pow(2).mean()
        terms = {**out.terms, "reference_l2": reconstruction.item()}
        return GuidanceOutput(out.grad, out.loss + self.weight * reconstruction, terms, out.sigma, out.latents)

    def extra_phases(self) -> list[Phase]:
        return self.inner.extra_phases()

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        features = None if camera_features is None else camera_features[1:]
        return self.inner.phase_loss(name, images[1:], list(prompts)[1:], features, generator)

    def modules(self) -> dict[str, nn.Module]:
        return self.inner.modules()
