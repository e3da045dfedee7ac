"""3D Gaussians as a text-to-3D scene: initialisation, one Adam per parameter group with decaying rates,
gsplat's densification and the prune-only phase after each step, and the splat PLY as the export."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from gendistill.errors import UserError, check_range
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import (GaussianParams, GaussianRenderer, RenderOutput, init_from_points,
                                         init_from_sphere, rgb_to_sh0)
from gendistill.render.ply import load_ply, read_ply_vertices, save_ply
from gendistill.text_to_3d.config import Text3DConfig
from gendistill.text_to_3d.densify import Densifier

SCENE_FILE = "scene.ply"
"""The Gaussians in the standard 3DGS PLY layout (splat viewers and gradio's Model3D read it)."""


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


def initial_gaussians(config: Text3DConfig, generator: torch.Generator) -> GaussianParams:
    """Gaussians in a ball (DreamGaussian's start), or those of ``init.ply`` (3DGS file or point cloud)."""
    c = config.init
    if c.ply is None:
        check_range("init.radius", c.radius, 1e-6)
        check_range("init.colour_jitter", c.colour_jitter, 0.0, 0.5)
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


def make_optimizers(params: GaussianParams, config: Text3DConfig) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter group (gsplat's strategies need that), keyed by group name; the means' rate is
    scaled by the scene radius, as parameter_groups does."""
    optimizers = {}
    for group in params.parameter_groups(config.scene_radius):
        torch_group = {**group.as_torch(), "lr": getattr(config.optim.lr, group.name) * (
            config.scene_radius if group.name == "means" else 1.0)}
        optimizers[group.name] = torch.optim.Adam([torch_group], betas=tuple(config.optim.betas), eps=1e-15)
    return optimizers


def decayed_lr(config: Text3DConfig, name: str, base: float, step: int) -> float:
    """Exponential decay from ``base`` to ``base * optim.means_lr_final`` (means) or ``base * optim.lr_final``
    (the other groups) over the run."""
    final = config.optim.means_lr_final if name == "means" else config.optim.lr_final
    return base * final ** (step / max(1, config.iterations - 1))


class GaussianScene:
    """3D Gaussians under optimisation (or loaded for evaluation, without optimisers)."""

    representation = "gaussians"

    def __init__(self, params: GaussianParams, config: Text3DConfig, renderer: GaussianRenderer | None = None):
        self.params, self.config = params, config
        self.renderer = renderer or GaussianRenderer()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.densifier: Densifier | None = None
        self.base_lrs: dict[str, float] = {}

    @classmethod
    def create(cls, config: Text3DConfig, generator: torch.Generator, device: torch.device) -> GaussianScene:
        """The initial Gaussians (drawn from ``generator``) with their optimisers and densifier."""
        scene = cls(initial_gaussians(config, generator).to(device), config)
        scene.optimizers = make_optimizers(scene.params, config)
        scene.densifier = Densifier(config.densify, scene.params, scene.optimizers, config.scene_radius,
                                    config.iterations)
        scene.base_lrs = {name: opt.param_groups[0]["lr"] for name, opt in scene.optimizers.items()}
        return scene

    @classmethod
    def load(cls, run_dir: Path, config: Text3DConfig) -> GaussianScene:
        """The Gaussians a run wrote to ``run_dir`` (for evaluation)."""
        return cls(load_ply(run_dir / SCENE_FILE), config)

    def render(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        return self.renderer.render(self.params, cameras, background)

    @torch.no_grad()
    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        out = self.render(cameras, background)
        return out.rgb, out.alpha

    def before_backward(self, step: int, render: RenderOutput, cameras: Cameras) -> None:
        self.densifier.before_backward(step, render, cameras)

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def gradients_finite(self) -> bool:
        return all(p.grad is None or torch.isfinite(p.grad).all() for p in self.params.splats.values())

    def step(self, step: int, render: RenderOutput, cameras: Cameras) -> dict[str, float]:
        """Decay the rates, clip, take each Adam step, then grow and prune; logs the Gaussian count."""
        for name, opt in self.optimizers.items():
            opt.param_groups[0]["lr"] = decayed_lr(self.config, name, self.base_lrs[name], step)
            if self.config.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params.splats[name], self.config.optim.grad_clip)
            opt.step()
        return {"gaussians": self.densifier.after_backward(step, render, cameras).after}

    def export(self, out_dir: Path) -> list[Path]:
        return [save_ply(self.params, out_dir / SCENE_FILE)]

    def summary(self) -> dict:
        return {"num_gaussians": len(self.params)}

    def describe(self) -> str:
        return f"{len(self.params)} Gaussians"
