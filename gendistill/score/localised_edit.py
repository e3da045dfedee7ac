"""GSEditPro's progressive localisation around the generic score-distillation recipe.

GSEditPro (Sun et al. 2024, "GSEditPro: 3D Gaussian Splatting Editing with Attention-based Progressive
Localization", arXiv 2411.10033, Sec. 3.2): render the scene from several views, take the T2I model's
cross-attention map of the edited word on each render (``word_attention.py``), carry the maps onto the
Gaussians by their alpha-blending weights (``render/splat_weights.py``: each Gaussian gets the mean attention
over the pixels it drew), and select the Gaussians above a threshold. The selection is refined as the edit goes
on ("progressive"): every ``every`` steps it is measured again on the current scene, blended into the
relevance by an EMA, Gaussians added by densification included (they inherit their parent's relevance).

``LocalisedEditRecipe`` is the score-distillation recipe unchanged (SDS or any guidance on the renders, the
pseudo-ground-truth term and the masked updates come from ``SelectiveGaussianScene``) plus one hook after each
scene update: the re-localisation. Nothing here optimises; the one trainer runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.errors import check_range, key_path
from gendistill.recipe import Loss, Phase, Update
from gendistill.render.cameras import Cameras
from gendistill.render.scenes.selective_gaussians import SelectiveGaussianScene
from gendistill.score.scene_recipe import SCENE_PHASE, SceneDistillationRecipe, Views
from gendistill.score.teacher import Teacher
from gendistill.score.word_attention import cross_layers, word_attention_maps, word_positions


@dataclass
class LocalisationConfig:
    """GSEditPro's attention-based progressive localisation."""

    enabled: bool = True
    """Localise the edit (false: every Gaussian may change: unlocalised score-distillation editing)."""
    every: int = 50
    """Steps between re-localisations (the first is before step 0)."""
    views: int = 8
    """Cameras, evenly spaced in azimuth, whose renders are read."""
    elevation_deg: float = 20.0
    """Their elevation."""
    t: float = 0.4
    """The renders are noised at this fraction of the model's timesteps before the attention is read."""
    cross_downsample: int = 2
    """Cross-attention maps from the layers this many times smaller than the latent (or the nearest ones)."""
    threshold: float = 0.5
    """Gaussians whose relevance (mean normalised attention over their pixels) exceeds this are selected."""
    momentum: float = 0.5
    """EMA weight of each new measurement of the relevance (1: the newest alone)."""
    keep_selected: bool = False
    """Never deselect (the union of the selections over the run) instead of following the EMA."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "every"), self.every, 1)
        check_range(key_path(path, "views"), self.views, 1)
        check_range(key_path(path, "t"), self.t, 0.0, 1.0)
        check_range(key_path(path, "cross_downsample"), self.cross_downsample, 1)
        check_range(key_path(path, "threshold"), self.threshold, 0.0, 1.0)
        check_range(key_path(path, "momentum"), self.momentum, 0.0, 1.0)
        check_range(key_path(path, "elevation_deg"), self.elevation_deg, -89.0, 89.0)


class Localiser:
    """Measures each Gaussian's relevance to ``word`` of ``prompt`` from the teacher's attention."""

    def __init__(self, teacher: Teacher, config: LocalisationConfig, prompt: str, word: str, cameras: Cameras,
                 background: Tensor, seed: int):
        word_positions(teacher, prompt, word)  # a word not in the prompt fails here, before any step
        self.teacher, self.config, self.prompt, self.word = teacher, config, prompt, word
        self.cameras, self.background, self.seed = cameras, background, seed
        self.layers = cross_layers(teacher, config.cross_downsample)

    def attention(self, scene: SelectiveGaussianScene, step: int) -> tuple[Tensor, Tensor]:
        """The renders of the localisation cameras and the word's attention maps on them, (V, 3|1, H, W)."""
        rgb, _ = scene.render_views(self.cameras, self.background)
        generator = torch.Generator(device=rgb.device).manual_seed(self.seed * 1_000_003 + step + 1)
        return rgb, word_attention_maps(self.teacher, rgb, self.prompt, self.word, self.config.t, self.layers,
                                        generator)

    def localise(self, scene: SelectiveGaussianScene, step: int) -> None:
        """Measure the relevance now and update the scene's selection (``step`` -1: before the first step)."""
        _, maps = self.attention(scene, step)
        weights = scene.splat_weights(self.cameras, maps)
        c = self.config
        scene.update_relevance(weights.mean(), weights.coverage > 1e-6, c.momentum if step >= 0 else 1.0,
                               c.threshold, c.keep_selected)


class LocalisedEditRecipe:
    """``SceneDistillationRecipe`` on a ``SelectiveGaussianScene``, re-localised every ``every`` steps."""

    def __init__(self, inner: SceneDistillationRecipe, localiser: Localiser | None):
        self.inner, self.localiser = inner, localiser

    @property
    def scene(self) -> SelectiveGaussianScene:
        return self.inner.scene

    def start(self) -> None:
        """The first localisation, before step 0 (a resumed run replaces it by its checkpoint's)."""
        if self.localiser is not None:
            self.localiser.localise(self.scene, -1)

    def phases(self) -> list[Phase]:
        return self.inner.phases()

    def modules(self) -> dict[str, nn.Module]:
        return self.inner.modules()

    def ema_module(self) -> str | None:
        return None

    def loss(self, batch: Views, phase: str, step: int, generator: torch.Generator) -> Loss:
        return self.inner.loss(batch, phase, step, generator)

    def after_update(self, update: Update) -> None:
        self.inner.after_update(update)
        due = self.localiser is not None and (update.step + 1) % self.localiser.config.every == 0
        if update.phase == SCENE_PHASE and due:
            self.localiser.localise(self.scene, update.step)
            self.scene.freeze_moments(update.optimizers)

    def logged(self) -> dict[str, float]:
        return self.inner.logged()

    def extra_state(self) -> dict[str, Tensor]:
        return self.inner.extra_state()

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.inner.load_extra_state(state)
