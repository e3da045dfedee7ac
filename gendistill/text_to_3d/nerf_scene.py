"""A NeRF as a text-to-3D scene: a radiance field (``gendistill.render.nerf``, nerfstudio's field components)
volume rendered from the training cameras with jittered samples, one Adam over its parameter groups with
decaying rates, and a fading density blob at the centre while it trains (DreamFusion / Magic3D).

Exports: ``field.safetensors`` (the checkpoint ``gendistill eval-3d`` reloads) and the marching-cubes mesh
``scene_mesh.ply`` (plus ``.obj`` / ``.glb``, ``nerf.mesh.formats``) with the field's colours per vertex.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gendistill.render.cameras import Cameras
from gendistill.text_to_3d.config import Text3DConfig

CHECKPOINT_FILE = "field.safetensors"
"""The field, as ``gendistill.render.nerf.save_field`` writes it."""
MESH_STEM = "scene_mesh"
"""The mesh files are ``scene_mesh.ply`` (first: what a viewer shows), ``.obj``, ``.glb``."""


@dataclass(frozen=True)
class NerfRender:
    """A differentiable render of C cameras."""

    rgb: Tensor
    """(C, 3, H, W), the background composited in."""
    alpha: Tensor
    """(C, 1, H, W)."""


class BlobField(nn.Module):
    """``field`` plus ``strength * max(0, 1 - |x| / radius)`` on its density (colour unchanged); ``strength``
    is set by the trainer as the blob fades. Renders like the field it wraps (same ``config``)."""

    def __init__(self, field: nn.Module, strength: float, radius: float):
        super().__init__()
        self.field, self.strength, self.radius = field, strength, radius

    @property
    def config(self):
        return self.field.config

    def blob(self, x: Tensor) -> Tensor:
        return self.strength * (1.0 - x.norm(dim=-1) / self.radius).clamp_min(0.0)

    def density(self, x: Tensor) -> Tensor:
        return self.field.density(x) + self.blob(x)

    def forward(self, x: Tensor, directions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        density, rgb = self.field(x, directions)
        return density + self.blob(x), rgb


def set_initial_density(field: nn.Module, density: float) -> None:
    """Shift the bias of the density output so that a fresh field's density is about ``density`` everywhere
    (its features are near zero at initialisation; density is ``exp(raw - 1)``, see fields.py)."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, device=next(field.parameters()).device)
        current = float(field.density(probe))
        last = [m for m in field.density_head.modules() if isinstance(m, nn.Linear)][-1]
        last.bias[0] += math.log(density) - math.log(max(current, 1e-12))


class NerfScene:
    """A radiance field under optimisation (or loaded for evaluation, without an optimiser)."""

    representation = "nerf"

    def __init__(self, field: nn.Module, config: Text3DConfig):
        self.field, self.config = field, config
        self.optimizer: torch.optim.Optimizer | None = None
        self.base_lrs: list[float] = []
        self.trainee = BlobField(field, 0.0, config.nerf.blob_radius)
        self.sample_gen: torch.Generator | None = None
        self.mesh = None

    @classmethod
    def create(cls, config: Text3DConfig, generator: torch.Generator, device: torch.device) -> NerfScene:
        """A fresh field (seeded from ``generator``) with its optimiser; the blob at full strength."""
        from gendistill.render.nerf import build_field

        n = config.nerf
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        field = build_field(n.field, seed=seed).to(device)
        set_initial_density(field, n.initial_density)
        scene = cls(field, config)
        groups = field.parameter_groups()
        if n.lr is not None:
            groups = [{**g, "lr": n.lr} for g in groups]
        scene.optimizer = torch.optim.Adam(groups, betas=tuple(n.betas), eps=1e-15)
        scene.base_lrs = [g["lr"] for g in scene.optimizer.param_groups]
        scene.trainee.strength = n.density_blob
        scene.sample_gen = torch.Generator(device).manual_seed(seed)
        return scene

    @classmethod
    def load(cls, run_dir: Path, config: Text3DConfig) -> NerfScene:
        """The field a run wrote to ``run_dir`` (for evaluation)."""
        from gendistill.render.nerf import load_field

        return cls(load_field(run_dir / CHECKPOINT_FILE), config)

    def render(self, cameras: Cameras, background: Tensor) -> NerfRender:
        from gendistill.render.nerf import render_cameras

        n = self.config.nerf
        rgb, alpha = render_cameras(self.trainee, cameras, n.num_samples, background, chunk=n.chunk,
                                    generator=self.sample_gen, num_importance=n.num_importance)
        return NerfRender(rgb, alpha)

    @torch.no_grad()
    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        """The field alone (no blob), deterministic samples."""
        from gendistill.render.nerf import render_cameras

        n = self.config.nerf
        return render_cameras(self.field, cameras, n.eval_samples, background, chunk=n.chunk,
                              num_importance=n.num_importance)

    def before_backward(self, step: int, render: NerfRender, cameras: Cameras) -> None:
        pass

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def gradients_finite(self) -> bool:
        return all(p.grad is None or torch.isfinite(p.grad).all() for p in self.field.parameters())

    def step(self, step: int, render: NerfRender, cameras: Cameras) -> dict[str, float]:
        """Decay the rates, take the Adam step, fade the blob; logs the mean opacity of the renders."""
        n, total = self.config.nerf, max(1, self.config.iterations - 1)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * n.lr_final ** (step / total)
        self.optimizer.step()
        fade_steps = n.blob_fraction * self.config.iterations
        self.trainee.strength = n.density_blob * max(0.0, 1.0 - (step + 1) / fade_steps) if fade_steps > 0 else 0.0
        return {"mean_alpha": render.alpha.detach().mean().item()}

    def export(self, out_dir: Path) -> list[Path]:
        """``scene_mesh.ply`` (and the other mesh formats), then ``field.safetensors``."""
        from gendistill.render.nerf import save_field
        from gendistill.render.nerf.mesh import extract_mesh, save_mesh

        m = self.config.nerf.mesh
        self.mesh = extract_mesh(self.field, m.resolution, m.density_threshold)
        formats = ("ply",) + tuple(f for f in m.formats if f != "ply")
        meshes = save_mesh(self.mesh, out_dir / MESH_STEM, formats)
        return [meshes[0], save_field(self.field, out_dir / CHECKPOINT_FILE), *meshes[1:]]

    def summary(self) -> dict:
        out = {"field_architecture": self.field.config.architecture,
               "field_parameters": sum(p.numel() for p in self.field.parameters())}
        if self.mesh is not None:
            out.update(mesh_vertices=len(self.mesh.vertices), mesh_faces=len(self.mesh.faces))
        return out

    def describe(self) -> str:
        s = self.summary()
        mesh = f", mesh of {s['mesh_faces']} triangles" if "mesh_faces" in s else ""
        return f"{s['field_architecture']} NeRF ({s['field_parameters'] / 1e3:.0f}k parameters){mesh}"
