"""What every score-distillation guidance shares: its output, its protocol, the weightings ``w(t)``.

A guidance is used by a job in two ways: ``gradient`` (the scene's loss on its renders) and, for methods that
train something of their own (VSD's fake score), ``extra_phases`` plus ``phase_loss``: one more phase the
job's trainer optimises beside the scene's, so no job branches on the method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

import torch
from torch import Tensor, nn

from gendistill.diffusion.denoiser import expand_sigma
from gendistill.recipe import Loss, Phase

Weighting = Literal["sds", "uniform", "snr"]
WEIGHTINGS = ("sds", "uniform", "snr")


@dataclass
class GuidanceOutput:
    """One score-distillation step: ``loss.backward()`` sends ``grad`` back to the images."""

    grad: Tensor
    """Per-image gradient on the latents, (B, C, h, w), detached (epsilon units times w)."""
    loss: Tensor
    """Surrogate scalar: its gradient with respect to ``latents`` is ``grad / B``."""
    terms: dict[str, float]
    """Named values for logging: mean timestep fraction ``t``, mean per-image ``grad_norm``, ``surrogate``, ..."""
    sigma: Tensor
    """The noise level of each image, (B,)."""
    latents: Tensor
    """The encoded images, (B, C, h, w), still attached to the images' graph."""


class ScoreGuidance(Protocol):
    """A diffusion model as a loss on images (SDS, CSD, NPG, VSD); built by its config: ``config.build(model)``."""

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        """The guidance on ``images`` (B, 3, H, W) in [0, 1], one prompt per image, at ``step`` (0-based) of
        ``total_steps``. Randomness (timesteps first, then noise) comes from ``generator`` only.
        ``camera_features`` (B, camera_dim) is read by methods whose fake score is camera-conditioned (VSD);
        others ignore it. A guidance whose class sets ``reads_depth = True`` (structure-aware SDS) also gets
        ``depth=DepthViews(depth, alpha)``, the render's expected depth and coverage."""

    def extra_phases(self) -> list[Phase]:
        """The guidance's own trainable phases, run by the job beside the scene's (VSD: ``fake_score``, its
        LoRA and camera MLP); empty for methods with nothing to train."""

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        """The loss of extra phase ``name`` on the current renders ``images`` (detached inside)."""

    def modules(self) -> dict[str, nn.Module]:
        """The state of the extra phases, by name, for checkpoints (empty without extra phases)."""


def no_phase(method: str, name: str) -> ValueError:
    """The error of ``phase_loss`` on a guidance without extra phases (or with other names)."""
    return ValueError(f"{method} has no phase {name!r}")


def guidance_weight(sigma: Tensor, weighting: Weighting) -> Tensor:
    """``w(sigma)`` per image, (B,)."""
    if weighting == "sds":
        return sigma**2 / (1 + sigma**2)
    if weighting == "uniform":
        return torch.ones_like(sigma)
    if weighting == "snr":
        return sigma
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def weighted(grad: Tensor, sigma: Tensor, weighting: Weighting) -> Tensor:
    """``w(sigma) * grad`` per image."""
    return expand_sigma(guidance_weight(sigma, weighting), grad) * grad


def randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved next to ``like``."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device=like.device, dtype=like.dtype)


def check_batch(images: Tensor, prompts: Sequence[str]) -> None:
    """A ValueError unless there is one prompt per image."""
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise ValueError(f"need one prompt per image: {images.shape[0]} images, "
                         f"{1 if isinstance(prompts, str) else len(prompts)} prompts")
