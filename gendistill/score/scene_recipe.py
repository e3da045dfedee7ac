"""Score distillation of any scene as a recipe of the one trainer.

Phase ``scene``: the batch is a set of views (cameras from a rig, one prompt per view); the scene renders
them, the guidance (SDS, VSD, CSD, NPG, ...) returns its surrogate loss on the renders, image priors and the
scene's own regularisation are added, and after the optimizer step the scene's hook runs (densification).
Then each extra phase the guidance declares (VSD's ``fake_score``) trains on the same step's renders. The
recipe never branches on the method's name or the scene's kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gendistill.errors import UserError
from gendistill.recipe import Loss, Phase, Update
from gendistill.render.cameras import Cameras
from gendistill.render.scene import Scene, SceneRender
from gendistill.score.base import ScoreGuidance
from gendistill.score.regularisers import gaussian_blur, surface_total_variation
from gendistill.score.structure_aware import DepthViews

SCENE_PHASE = "scene"


@dataclass(frozen=True)
class Views:
    """One step's batch: the cameras, one prompt per view and the features a camera-aware fake score reads."""

    cameras: Cameras
    prompts: list[str]
    camera_features: Tensor | None = None


@dataclass(frozen=True)
class ImagePriors:
    """Image-space terms on the renders, shared by every scene kind."""

    tv_weight: float = 0.0
    """Weight of the total variation of the surface colour (0: off)."""
    grad_blur_px: float = 0.0
    """Blur the guidance's gradient on the renders by this many pixels (0: off)."""


@dataclass
class _StepRenders:
    """What the scene phase leaves for the hooks and the extra phases of the same step."""

    render: SceneRender
    views: Views
    terms: dict[str, float] = field(default_factory=dict)


class SceneDistillationRecipe:
    """A scene optimised so that the guidance's model likes every view of it."""

    def __init__(self, scene: Scene, guidance: ScoreGuidance, background: Tensor, total_steps: int,
                 priors: ImagePriors = ImagePriors()):
        self.scene, self.guidance, self.background = scene, guidance, background
        self.total_steps, self.priors = total_steps, priors
        self._last: _StepRenders | None = None

    def phases(self) -> list[Phase]:
        return [Phase(SCENE_PHASE, groups=self.scene.parameter_groups()), *self.guidance.extra_phases()]

    def modules(self) -> dict[str, nn.Module]:
        scene = {f"scene.{k}": m for k, m in self.scene.modules().items()}
        return {**scene, **{f"guidance.{k}": m for k, m in self.guidance.modules().items()}}

    def ema_module(self) -> str | None:
        return None

    def loss(self, batch: Views, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase == SCENE_PHASE:
            return self._scene_loss(batch, step, generator)
        last = self._last
        return self.guidance.phase_loss(phase, last.render.rgb.detach(), last.views.prompts,
                                        last.views.camera_features, generator)

    def _scene_loss(self, views: Views, step: int, generator: torch.Generator) -> Loss:
        render = self.scene.render(views.cameras, self.background, generator)
        latents = getattr(render, "latents", None)  # a latent scene: the guidance reads its latents as they are
        images = render.rgb if latents is None else latents
        if self.priors.grad_blur_px > 0 and latents is None and images.requires_grad:
            images.register_hook(lambda grad: gaussian_blur(grad, self.priors.grad_blur_px))
        self.scene.before_backward(step, render, views.cameras)
        out = self.guidance.gradient(images, views.prompts, step, self.total_steps, generator,
                                     views.camera_features, **self._depth_of(render))
        total = out.loss
        if self.priors.tv_weight > 0 and latents is None:
            total = total + self.priors.tv_weight * surface_total_variation(render.rgb, render.alpha, self.background)
        own = self.scene.regularisation(render, step)
        if own is not None:
            total = total + own
        self._last = _StepRenders(render, views)
        terms = {k: out.terms[k] for k in ("grad_norm", "depth_grad_norm", "t") if k in out.terms}
        return Loss(total, terms, outputs=render)

    def _depth_of(self, render: SceneRender) -> dict:
        """``depth=`` for a guidance that reads the render's depth (structure-aware SDS), else nothing."""
        if not getattr(self.guidance, "reads_depth", False):
            return {}
        depth = getattr(render, "depth", None)
        if depth is None:
            raise UserError(f"{type(self.guidance).__name__} scores depth, and this scene renders none; "
                            "use scene.kind=gaussians")
        return {"depth": DepthViews(depth, render.alpha)}

    def after_update(self, update: Update) -> None:
        if update.phase == SCENE_PHASE and self._last is not None:
            self._last.terms = self.scene.after_update(update, self._last.render, self._last.views.cameras)

    def logged(self) -> dict[str, float]:
        """The scene hook's values of the last step (e.g. the Gaussian count), for the progress bar."""
        return dict(self._last.terms) if self._last is not None else {}

    def extra_state(self) -> dict[str, Tensor]:
        own = getattr(self.scene, "extra_state", None)
        return own() if own is not None else {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        own = getattr(self.scene, "load_extra_state", None)
        if own is not None:
            own(state)


ViewSampler = Callable[[int, torch.Generator], Views]
"""``sample(step, generator) -> Views``: a job's batch function for this recipe."""
