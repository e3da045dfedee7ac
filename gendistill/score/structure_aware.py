"""Structure-aware SDS: SDS on the render's RGB and on its depth, from two denoisers (HumanGaussian, Liu et al.
2024, "HumanGaussian: Text-Driven 3D Human Generation with Gaussian Splatting", §3.2; reference code
alvinliu0/HumanGaussian, ``threestudio/models/guidance/dual_branch_guidance.py``).

HumanGaussian distils a texture-structure joint model: one UNet whose RGB and depth branches share the
trunk and see the same timestep with independent noises; the loss is ``L_rgb + lw_depth * L_depth`` with
``lw_depth = 0.5``. Here the depth branch is a second denoiser of the same family (the shapes teacher
fine-tuned on depth drawn as grey images, ``shapes-depth-teacher``), for three reasons: the RGB model stays
any model (Stable Diffusion, a distilled student), each branch is a stock diffusers folder, and grey images
live in the RGB VAE's domain, so no new VAE. As in the reference, both branches use the same timesteps and
independent noises; per branch the gradient is SDS's ``w(t) (eps_hat - eps)`` (in x0 units,
``dm_gradient(x0, D_guided, x0, sigma)``), and::

    loss = surrogate(rgb latents, g_rgb) + depth_weight * surrogate(depth latents, g_depth)

The depth reaching the depth branch is the scene's expected depth drawn by
:func:`gendistill.render.depth_images.depth_to_grey` over the configured range (the shapes world's by
default), so gradients flow into the Gaussians' positions (through depth) and opacities (through coverage).
``depth_views`` scores only the first k views of each batch with the depth branch: its VAE encode, two UNet
calls and VAE backward are most of the branch's cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.losses import dm_gradient, surrogate_loss
from gendistill.diffusion.timesteps import TimestepPolicy, TimestepRange
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.render.depth_images import depth_to_grey
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, no_phase, weighted
from gendistill.score.teacher import Noised, Teacher

SHAPES_DEPTH_RANGE = (3.0, 5.0)
"""The shapes world's depth images (``domains/shapes/depth.py``): its unit bounding sphere seen from distance 4."""


@dataclass
class StructureAwareSDSConfig:
    """SDS on RGB plus SDS on depth (HumanGaussian's structure-aware SDS) with a depth denoiser beside the model."""

    KIND: ClassVar[str] = "sds-rgbd"
    READS_DEPTH: ClassVar[bool] = True
    """The job checks that the scene renders depth before any work."""

    guidance_scale: float = 7.5
    """CFG scale of the RGB branch."""
    guidance_rescale: float = 0.0
    """Guidance rescale of both branches (0: off)."""
    negative_prompt: str = ""
    """Takes the empty prompt's place in both branches' CFG."""
    weighting: Weighting = "sds"
    """w(t) of both branches: "sds", "uniform" or "snr"."""
    timesteps: TimestepPolicy = field(default_factory=TimestepRange)
    """Timesteps of each step, shared by the two branches (as the reference's joint model)."""
    depth_model: str = "shapes-depth-teacher"
    """The depth denoiser: a diffusers text-to-image folder trained on depth drawn as grey images."""
    depth_weight: float = 0.5
    """Weight of the depth branch's loss (HumanGaussian's ``lw_depth``: 0.5)."""
    depth_guidance_scale: float | None = None
    """CFG scale of the depth branch; None: ``guidance_scale``."""
    depth_range: tuple[float, float] = SHAPES_DEPTH_RANGE
    """(near, far): camera depths drawn black and ``far_grey``; the background is white."""
    far_grey: float = 0.8
    """The grey of ``far`` (below the white background)."""
    depth_views: int = 0
    """Views of each batch the depth branch scores, the first ones (0: all)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "guidance_rescale"), self.guidance_rescale, 0.0, 1.0)
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)
        check_range(key_path(path, "depth_weight"), self.depth_weight, 0.0)
        check_range(key_path(path, "far_grey"), self.far_grey, 0.0, 1.0)
        check_range(key_path(path, "depth_views"), self.depth_views, 0)
        near, far = self.depth_range
        if not 0 <= near < far:
            raise UserError(f"{key_path(path, 'depth_range')} must be (near, far) with 0 <= near < far, "
                            f"got {list(self.depth_range)}")
        if not self.depth_model:
            raise UserError(f"{key_path(path, 'depth_model')} is empty: name the depth denoiser's folder")

    def build(self, model: TextToImageModel, depth_model: TextToImageModel | None = None) -> StructureAwareSDS:
        """The guidance with ``model`` as the RGB branch and ``depth_model`` (default: ``self.depth_model``
        loaded on ``model``'s device) as the depth branch."""
        if depth_model is None:
            from gendistill.backends.loading import load_pipeline

            depth_model = TextToImageModel(load_pipeline(self.depth_model, device=model.network.device))
        return StructureAwareSDS(model, depth_model, self)


@dataclass(frozen=True)
class DepthViews:
    """A render's expected depth and coverage, both (B, 1, H, W): what the depth branch reads."""

    depth: Tensor
    alpha: Tensor


class StructureAwareSDS:
    """Dual-branch SDS: ``gradient(images, ..., depth=DepthViews)``; without depth it is plain SDS."""

    reads_depth = True
    """The scene recipe passes the render's depth and coverage to guidances that set this."""

    def __init__(self, model: TextToImageModel, depth_model: TextToImageModel, config: StructureAwareSDSConfig):
        check_config(config, config.KIND)
        if depth_model.family != model.family:
            raise UserError(f"the depth model is a {depth_model.family} model and the RGB model a {model.family} "
                            "one; structure-aware SDS needs two of the same family")
        self.teacher, self.depth_teacher, self.config = Teacher(model), Teacher(depth_model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None,
                 depth: DepthViews | None = None) -> GuidanceOutput:
        c = self.config
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        grad = self._branch_gradient(self.teacher, latents, noised, prompts, c.guidance_scale)
        out = self.teacher.output(latents, grad, noised, {})
        if depth is None or c.depth_weight == 0:
            return out
        depth_loss, depth_norm = self._depth_loss(depth, prompts, noised.t, generator)
        terms = {**out.terms, "depth_grad_norm": depth_norm, "surrogate": out.loss.item() + depth_loss.item()}
        return GuidanceOutput(out.grad, out.loss + depth_loss, terms, out.sigma, out.latents)

    def _branch_gradient(self, teacher: Teacher, latents: Tensor, noised: Noised, prompts: Sequence[str],
                         scale: float) -> Tensor:
        """SDS's ``w(t) (eps_hat - eps)`` of one branch, in x0 units."""
        c = self.config
        real_score = teacher.guided(len(prompts), scale, c.guidance_rescale, c.negative_prompt)
        with torch.no_grad():
            real = real_score(noised.x, noised.sigma, teacher.conditions(prompts))
        grad = dm_gradient(latents, real, latents, noised.sigma, weighting="sds")
        return weighted(grad, noised.sigma, c.weighting)

    def _depth_loss(self, depth: DepthViews, prompts: Sequence[str], t: Tensor,
                    generator: torch.Generator) -> tuple[Tensor, float]:
        """``depth_weight`` times the depth branch's surrogate on the first ``depth_views`` views, at the RGB
        branch's timesteps with fresh noise; and the mean per-view gradient norm."""
        c = self.config
        k = c.depth_views or len(prompts)
        grey = depth_to_grey(depth.depth[:k], depth.alpha[:k], *c.depth_range, c.far_grey)
        latents = self.depth_teacher.encode(grey)
        noised = self.depth_teacher.noised_at(latents, t[:k], generator)
        scale = c.guidance_scale if c.depth_guidance_scale is None else c.depth_guidance_scale
        grad = self._branch_gradient(self.depth_teacher, latents, noised, prompts[:k], scale).detach()
        # surrogate_loss averages over its own batch: rescale so each depth view weighs as an RGB view does
        loss = surrogate_loss(latents, grad) * (k / len(prompts))
        return c.depth_weight * loss, grad.flatten(1).norm(dim=1).mean().item()

    def extra_phases(self) -> list[Phase]:
        """None: the injected noise is each branch's fake score."""
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase("sds-rgbd", name)

    def modules(self) -> dict[str, nn.Module]:
        return {}
