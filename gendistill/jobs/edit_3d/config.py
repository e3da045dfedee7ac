"""The configuration of a ``gendistill edit-3d`` run (YAML files in configs/edit-3d/ load into it).

An edit is a text-to-3D run started from the scene's Gaussians (so every text-to-3D key means the same here:
``method``, ``scene.lr``, ``scene.densify``, ``cameras``, ``optim``, ``run``, ``turntable``), plus the word
the edit is about, GSEditPro's localisation and its pseudo-ground-truth weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gendistill.config import load_config
from gendistill.errors import check_range
from gendistill.jobs.text_to_3d.config import Text3DConfig
from gendistill.render.densify import DensifyConfig, PruneConfig
from gendistill.render.scenes.gaussians import GaussianSceneConfig
from gendistill.score.localised_edit import LocalisationConfig


def edit_scene() -> GaussianSceneConfig:
    """The scene's optimisation for an edit: text-to-3D's rates, no prune-only phase (it would cut Gaussians
    the edit must leave alone)."""
    return GaussianSceneConfig(densify=DensifyConfig(prune=PruneConfig(after=None)))


@dataclass
class Edit3DConfig(Text3DConfig):
    """A 3D edit: score distillation on a loaded scene's Gaussians, localised to those the target word is about."""

    target: str = ""
    """The prompt's word the edit is about (the command's --target replaces it), e.g. cube in 'a green cube'."""
    scene: GaussianSceneConfig = field(default_factory=edit_scene)
    """The Gaussians' optimisation (``scene.init.ply`` is the command's SCENE argument)."""
    iterations: int = 300
    """Optimisation steps."""
    localisation: LocalisationConfig = field(default_factory=LocalisationConfig)
    """GSEditPro's attention-based progressive localisation (``enabled: false``: unlocalised editing)."""
    pseudo_gt_weight: float = 10.0
    """Weight of the pseudo-ground-truth term (L1 to the original outside the selection; 0: off)."""

    def check(self, path: str) -> None:
        super().check(path)
        check_range(f"{path}.pseudo_gt_weight" if path else "pseudo_gt_weight", self.pseudo_gt_weight, 0.0)


def load_edit3d_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Edit3DConfig:
    """An ``Edit3DConfig`` from a YAML file (or the defaults) and ``key=value`` overrides."""
    return load_config(Edit3DConfig, path, overrides)
