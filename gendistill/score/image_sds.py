"""SDS from an image- and camera-conditioned teacher: Isotropic3D's guidance (Liu et al. 2024,
arXiv:2403.10395, Sec. 3.4, eq. 7; code: pkunliu/Isotropic3D,
threestudio/models/guidance/multiview_diffusion_guidance.py).

Each view's condition is the reference image's CLIP embedding (the same for every view) and *its own*
camera; classifier-free guidance runs against the zero embedding with the same camera (the reference code's
``torch.zeros_like`` null context). The gradient is DreamFusion's ``w(t) (eps_hat - eps)`` in the
project's canonical units (``dm_gradient(..., weighting="sds")``), with ``w = 1 - abar`` (the reference's
``1 - alphas[t]``). No term ever compares a render with the reference image: the optimisation is isotropic in
azimuth, which is the method's point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.image_camera_model import CAMERA_DIM, ImageCameraCondition, ImageCameraModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.losses import dm_gradient, surrogate_loss
from gendistill.diffusion.timesteps import Decreasing, TimestepPolicy
from gendistill.errors import check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, no_phase, randn, weighted


@dataclass
class ImageSDSConfig:
    """SDS whose only condition is a reference image's embedding, each view at its own camera."""

    KIND: ClassVar[str] = "image-sds"

    guidance_scale: float = 7.5
    """CFG scale against the zero embedding (Isotropic3D: 10 on MVDream; the shapes presets: 7.5, as
    text-to-3D's SDS); <= 1 uses the conditional alone."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t)."""
    timesteps: TimestepPolicy = field(default_factory=lambda: Decreasing(0.98, 0.2, "sqrt", 0.1))
    """Timesteps of each step (fractions of T; ``kind:`` range, annealed_max or decreasing). Isotropic3D draws
    them uniformly in 0.02-0.98 (``kind: range``); the default is text-to-3D's schedule for the shapes
    teacher, 0.98 down to 0.2."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0.0)
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)

    def build(self, model: ImageCameraModel, embedding: Tensor) -> ImageSDS:
        """The guidance of ``model`` conditioned on ``embedding`` (D,)."""
        return ImageSDS(model, embedding, self)


class ImageSDS:
    """``grad = w(t) (eps_hat(x_t; e, c_view) - eps)``, ``eps_hat`` guided against ``(0, c_view)``."""

    def __init__(self, model: ImageCameraModel, embedding: Tensor, config: ImageSDSConfig):
        check_config(config, config.KIND)
        if embedding.ndim != 1 or embedding.shape[0] != model.embed_dim:
            raise ValueError(f"the embedding must be ({model.embed_dim},), got {tuple(embedding.shape)}")
        self.model, self.config = model, config
        self.embedding = embedding.detach().float()
        self.denoiser = model.denoiser()
        self.train_sigmas = model.train_sigmas

    def condition(self, camera_features: Tensor | None, device: torch.device) -> ImageCameraCondition:
        """The embedding repeated for each view, with the views' cameras (B, 16)."""
        if camera_features is None or camera_features.ndim != 2 or camera_features.shape[1] != CAMERA_DIM:
            raise ValueError(f"image-sds needs each view's camera features, (B, {CAMERA_DIM})")
        camera = camera_features.to(device).float()
        return ImageCameraCondition(self.embedding.to(camera.device).expand(len(camera), -1), camera)

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        """``prompts`` are ignored: the embedding is the only condition."""
        c = self.config
        latents = self.model.encode(images)
        T = len(self.train_sigmas)
        t = c.timesteps.timesteps(step, total_steps, latents.shape[0], generator, T)
        sigma = self.train_sigmas[t].to(device=latents.device, dtype=latents.dtype)
        noise = randn(latents.shape, generator, latents)
        x = latents.detach() + expand_sigma(sigma, latents) * noise
        cond = self.condition(camera_features, latents.device)
        with torch.no_grad():
            real = CFGDenoiser(self.denoiser, cond.null(), c.guidance_scale)(x, sigma, cond)
        grad = weighted(dm_gradient(latents, real, latents, sigma, weighting="sds"), sigma, c.weighting).detach()
        loss = surrogate_loss(latents, grad)
        terms = {"t": t.double().mean().item() / T, "grad_norm": grad.flatten(1).norm(dim=1).mean().item(),
                 "surrogate": loss.item()}
        return GuidanceOutput(grad, loss, terms, sigma, latents)

    def extra_phases(self) -> list[Phase]:
        """None: the injected noise is SDS's fake score."""
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase("image-sds", name)

    def modules(self) -> dict[str, nn.Module]:
        return {}
