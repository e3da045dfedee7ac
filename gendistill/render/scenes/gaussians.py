"""3D Gaussians as a scene: initialisation, one parameter group per splat attribute with decaying rates,
gsplat's densification and the prune-only phase after each optimizer step, and the splat PLY as the export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from gendistill.errors import UserError, check_range, key_path
from gendistill.recipe import ParamGroup, Update
from gendistill.render.cameras import Cameras
from gendistill.render.densify import Densifier, DensifyConfig
from gendistill.render.gaussians import (GaussianParams, GaussianRenderer, RenderOutput, init_from_points,
                                         init_from_sphere, rgb_to_sh0)
from gendistill.render.ply import load_ply, read_ply_vertices, save_ply

SCENE_FILE = "scene.ply"
"""The Gaussians in the standard 3DGS PLY layout (splat viewers and gradio's Model3D read it)."""


@dataclass
class InitConfig:
    """Where the Gaussians start."""

    num_points: int = 2000
    """Gaussians drawn uniformly in a ball (ignored when ``ply`` is given)."""
    radius: float = 0.6
    """Radius of that ball."""
    opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    colour_jitter: float = 0.05
    """Initial colours are grey 0.5 plus uniform noise of this half-width (DreamGaussian starts near grey;
    0.5 gives uniformly random colours)."""
    sh_degree: int = 0
    """Largest spherical-harmonics degree (0: view-independent colour, which Lambertian shading is)."""
    ply: str | None = None
    """Start from a PLY instead: a 3DGS file (its Gaussians) or a point cloud (x, y, z and optional
    red/green/blue)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "num_points"), self.num_points, 1)
        check_range(key_path(path, "radius"), self.radius, 1e-6)
        check_range(key_path(path, "colour_jitter"), self.colour_jitter, 0.0, 0.5)
        if self.ply is not None and not Path(self.ply).is_file():
            raise UserError(f"{key_path(path, 'ply')} {self.ply!r} does not exist")


@dataclass
class LearningRates:
    """Adam learning rate of each of ``GaussianParams.parameter_groups`` (gsplat simple_trainer's names)."""

    means: float = 1e-3
    """Positions (times the scene radius)."""
    scales: float = 5e-3
    """Log scales."""
    quats: float = 5e-3
    """Rotations."""
    opacities: float = 5e-2
    """Opacity logits."""
    sh0: float = 5e-2
    """Degree-0 SH coefficients (the base colour)."""
    shN: float = 5e-4  # noqa: N815 - gsplat's name
    """Higher SH coefficients."""


@dataclass
class GaussianSceneConfig:
    """3D Gaussians (gsplat): where they start, Adam per parameter group, adaptive density control."""

    KIND: ClassVar[str] = "gaussians"
    FILES: ClassVar[tuple[str, ...]] = (SCENE_FILE,)
    RENDERS_DEPTH: ClassVar[bool] = True
    """Its renders carry the expected depth (what depth-reading guidances score)."""
    """The files a run leaves for a viewer and for ``load`` (the last is the one ``load`` needs)."""

    radius: float = 1.0
    """Scene radius: scales the means' learning rate and the densification's size thresholds."""
    init: InitConfig = field(default_factory=InitConfig)
    """Where the Gaussians start."""
    lr: LearningRates = field(default_factory=LearningRates)
    """Learning rates by parameter group."""
    means_lr_final: float = 0.1
    """The means' learning rate decays exponentially to this fraction of its start (DreamGaussian)."""
    lr_final: float = 1.0
    """Every other group's learning rate decays exponentially to this fraction (1: constant); a decay
    averages out the noise of the score-distillation gradient in the colours."""
    betas: tuple[float, float] = (0.99, 0.999)
    """Adam's betas; a beta1 near 1 averages the noisy score-distillation gradient over more steps."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """Growth and pruning."""

    def check_installed(self) -> None:
        """Nothing beyond the base install (gsplat's torch functions run anywhere)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "radius"), self.radius, 1e-6)

    def build(self, generator: torch.Generator, device: torch.device, total_steps: int) -> GaussianScene:
        """The initial Gaussians (drawn from ``generator``) with their densifier."""
        return GaussianScene(initial_gaussians(self.init, generator).to(device), self, total_steps)

    def load(self, run_dir: Path) -> GaussianScene:
        """The Gaussians a run wrote to ``run_dir`` (for evaluation)."""
        return GaussianScene(load_ply(Path(run_dir) / SCENE_FILE), self)


def _point_cloud(path: Path) -> tuple[Tensor, Tensor]:
    """Points (N, 3) and colours (N, 3) in [0, 1] of a binary PLY point cloud (grey when it has none)."""
    import numpy as np

    v = read_ply_vertices(path)
    names = set(v.dtype.names)
    if not {"x", "y", "z"} <= names:
        raise UserError(f"{path} is neither a 3DGS file nor a point cloud (no x, y, z vertex properties)")
    points = torch.from_numpy(np.stack([v[k].astype(np.float32) for k in "xyz"], axis=1))
    if {"red", "green", "blue"} <= names:
        rgb = np.stack([v[k].astype(np.float32) for k in ("red", "green", "blue")], axis=1)
        colours = torch.from_numpy(rgb / (255.0 if rgb.max() > 1 else 1.0))
    else:
        colours = torch.full_like(points, 0.5)
    return points, colours


def initial_gaussians(c: InitConfig, generator: torch.Generator) -> GaussianParams:
    """Gaussians in a ball (DreamGaussian's start), or those of ``c.ply`` (3DGS file or point cloud)."""
    if c.ply is None:
        params = init_from_sphere(c.num_points, c.radius, generator, sh_degree=c.sh_degree, opacity=c.opacity)
        colours = 0.5 + c.colour_jitter * (2 * torch.rand(c.num_points, 3, generator=generator) - 1)
        with torch.no_grad():
            params.sh0.copy_(rgb_to_sh0(colours))
        return params
    try:
        return load_ply(c.ply)
    except UserError as err:
        if "missing vertex properties" not in str(err):
            raise
    points, colours = _point_cloud(Path(c.ply))
    return init_from_points(points, colours, sh_degree=c.sh_degree, opacity=c.opacity)


class GaussianScene:
    """3D Gaussians under optimisation (or loaded for evaluation: ``total_steps`` 0, no densifier use)."""

    kind = "gaussians"
    RENDERS_DEPTH = True

    def __init__(self, params: GaussianParams, config: GaussianSceneConfig, total_steps: int = 0,
                 renderer: GaussianRenderer | None = None):
        self.params, self.config = params, config
        self.renderer = renderer or GaussianRenderer()
        self.densifier = Densifier(config.densify, params, config.radius, total_steps) if total_steps else None

    def parameter_groups(self) -> tuple[ParamGroup, ...]:
        """One group per attribute (gsplat's strategies index the optimizers by these names); the means' rate
        is scaled by the scene radius and decays to ``means_lr_final``, the others to ``lr_final``."""
        c = self.config
        return tuple(ParamGroup(name, [self.params.splats[name]],
                                getattr(c.lr, name) * (c.radius if name == "means" else 1.0),
                                c.means_lr_final if name == "means" else c.lr_final)
                     for name in self.params.splats.keys())

    def modules(self) -> dict[str, nn.Module]:
        return {"gaussians": self.params}

    def render(self, cameras: Cameras, background: Tensor, generator: torch.Generator | None = None) -> RenderOutput:
        return self.renderer.render(self.params, cameras, background)

    @torch.no_grad()
    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        out = self.render(cameras, background)
        return out.rgb, out.alpha

    def regularisation(self, render: RenderOutput, step: int) -> Tensor | None:
        return None

    def before_backward(self, step: int, render: RenderOutput, cameras: Cameras) -> None:
        self.densifier.before_backward(step, render, cameras)

    def after_update(self, update: Update, render: RenderOutput, cameras: Cameras) -> dict[str, float]:
        """Grow and prune through the trainer's optimizers; logs the Gaussian count."""
        return {"gaussians": self.densifier.after_backward(update.step, render, cameras, update.optimizers).after}

    def extra_state(self) -> dict[str, Tensor]:
        return {f"densify.{k}": v for k, v in self.densifier.state_tensors().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.densifier.load_state_tensors({k[len("densify."):]: v for k, v in state.items()
                                           if k.startswith("densify.")})

    def export(self, out_dir: Path) -> list[Path]:
        return [save_ply(self.params, out_dir / SCENE_FILE)]

    def summary(self) -> dict:
        return {"num_gaussians": len(self.params)}

    def describe(self) -> str:
        return f"{len(self.params)} Gaussians"
