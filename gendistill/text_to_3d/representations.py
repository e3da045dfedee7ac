"""What the text-to-3D loop optimises: the representation interface and its two implementations.

The loop in ``run.py`` knows a scene only through :class:`Scene3D`: it renders a batch of cameras
(differentiably), lets the scene look at the render before the backward pass, and asks it to take its
optimiser step (learning-rate schedule, clipping, then its own post-backward hook: densification and
pruning for Gaussians, nothing for a NeRF). Evaluation and the turntable use ``render_views`` (no gradient,
deterministic); ``export`` writes the scene's files into the run folder and ``load`` reads them back, which
is what ``gendistill eval-3d DIR`` uses.

- :class:`~gendistill.text_to_3d.gaussian_scene.GaussianScene`: 3D Gaussians (``scene.ply``, 3DGS layout);
- :class:`~gendistill.text_to_3d.nerf_scene.NerfScene`: a radiance field from nerfstudio's field components
  (``field.safetensors`` plus a marching-cubes mesh ``scene_mesh.ply``); needs ``gendistill[nerf]``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from gendistill.errors import UserError
from gendistill.render.cameras import Cameras
from gendistill.text_to_3d.config import REPRESENTATIONS, Text3DConfig


class SceneRender(Protocol):
    """A differentiable render of C cameras."""

    rgb: Tensor
    """(C, 3, H, W) in [0, 1], the background composited in."""
    alpha: Tensor
    """(C, 1, H, W) accumulated opacity."""


class Scene3D(Protocol):
    """A 3D scene as the text-to-3D loop sees it."""

    representation: str
    """"gaussians" or "nerf"."""

    def render(self, cameras: Cameras, background: Tensor) -> SceneRender:
        """Render every camera with gradients (training renders may be stochastic)."""

    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        """(rgb, alpha) of every camera, without gradients and deterministic (evaluation, turntable)."""

    def before_backward(self, step: int, render: SceneRender, cameras: Cameras) -> None:
        """Called after rendering and before ``loss.backward()``."""

    def zero_grad(self) -> None:
        """Clear the gradients of every parameter."""

    def gradients_finite(self) -> bool:
        """Whether every parameter's gradient is finite (the NaN guard skips the step otherwise)."""

    def step(self, step: int, render: SceneRender, cameras: Cameras) -> dict[str, float]:
        """The optimiser step of ``step`` (schedule, clipping, post-backward hook); returns values to log."""

    def export(self, out_dir: Path) -> list[Path]:
        """Write the scene's files into ``out_dir``; the first is the one a 3D viewer shows."""

    def summary(self) -> dict:
        """Sizes for metrics.json (e.g. ``num_gaussians``)."""

    def describe(self) -> str:
        """One line for the command's report, e.g. "1234 Gaussians"."""


def check_representation(name: str) -> None:
    """A UserError for an unknown representation, or for nerf without nerfstudio installed."""
    if name not in REPRESENTATIONS:
        raise UserError(f"unknown representation {name!r}; choose one of: {', '.join(REPRESENTATIONS)}")
    if name == "nerf" and importlib.util.find_spec("nerfstudio") is None:
        raise UserError("the nerf representation needs nerfstudio's field components: "
                        "pip install 'gendistill[nerf]'")


def create_scene(config: Text3DConfig, generator: torch.Generator, device: torch.device) -> Scene3D:
    """The initial scene of ``config.representation``, ready to optimise (initial values from ``generator``)."""
    check_representation(config.representation)
    if config.representation == "nerf":
        from gendistill.text_to_3d.nerf_scene import NerfScene

        return NerfScene.create(config, generator, device)
    from gendistill.text_to_3d.gaussian_scene import GaussianScene

    return GaussianScene.create(config, generator, device)


def load_scene(run_dir: str | Path, config: Text3DConfig) -> Scene3D:
    """The scene a text-to-3D run wrote to ``run_dir`` (its resolved ``config`` says which representation)."""
    check_representation(config.representation)
    if config.representation == "nerf":
        from gendistill.text_to_3d.nerf_scene import NerfScene as cls
    else:
        from gendistill.text_to_3d.gaussian_scene import GaussianScene as cls
    return cls.load(Path(run_dir), config)


def scene_files(representation: str) -> tuple[str, ...]:
    """The files a run of ``representation`` leaves for a viewer and for ``load_scene``."""
    return ("scene_mesh.ply", "field.safetensors") if representation == "nerf" else ("scene.ply",)
