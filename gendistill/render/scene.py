"""What a score-distillation job optimises: anything differentiable that renders images.

3D Gaussians and NeRFs render a batch of cameras; 2D generators (an image's latents, a set of vector strokes)
are scenes that ignore the cameras. A scene owns no optimizer and no loop: it declares its parameter groups
(the trainer builds one optimizer per group and decays each group's rate), exposes its modules for
checkpoints, and brings its own hooks: before the backward pass (gsplat's densification keeps the 2D means'
gradients) and after each optimizer step (densify and prune through the optimizers it is handed, fade a
NeRF's density blob). Each kind is built by its own config section (``config.build(...)``); guidance never
sees the scene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from gendistill.recipe import ParamGroup, Update
from gendistill.render.cameras import Cameras


class SceneRender(Protocol):
    """A differentiable render of C cameras."""

    rgb: Tensor
    """(C, 3, H, W) in [0, 1], the background composited in."""
    alpha: Tensor
    """(C, 1, H, W) accumulated opacity (ones for 2D generators)."""


class Scene(Protocol):
    kind: str
    """The config kind that built it ("gaussians", "nerf", ...)."""

    def render(self, cameras: Cameras, background: Tensor, generator: torch.Generator) -> SceneRender:
        """Render every camera with gradients; training renders may be stochastic (draws from ``generator``)."""

    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        """(rgb, alpha) of every camera, without gradients and deterministic (evaluation, turntable)."""

    def parameter_groups(self) -> tuple[ParamGroup, ...]:
        """The groups the trainer optimizes, each with its rate and decay."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a checkpoint must hold, by name."""

    def regularisation(self, render: SceneRender, step: int) -> Tensor | None:
        """A loss term of the scene's own (e.g. a NeRF's opacity penalty), or None."""

    def before_backward(self, step: int, render: SceneRender, cameras: Cameras) -> None:
        """Called after rendering and before the backward pass."""

    def after_update(self, update: Update, render: SceneRender, cameras: Cameras) -> dict[str, float]:
        """Called after the optimizer step of ``update.step``; returns values to log."""

    def export(self, out_dir: Path) -> list[Path]:
        """Write the scene's files into ``out_dir``; the first is the one a viewer shows."""

    def summary(self) -> dict:
        """Sizes for metrics.json (e.g. ``num_gaussians``)."""

    def describe(self) -> str:
        """One line for a report, e.g. "1234 Gaussians"."""
