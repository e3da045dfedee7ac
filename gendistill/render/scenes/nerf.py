"""A NeRF as a scene: a radiance field (``gendistill.render.nerf``, nerfstudio's field components) volume
rendered from the training cameras with jittered samples, its parameter groups with decaying rates, and a
fading density blob at the centre while it trains (DreamFusion / Magic3D).

Three aids make training cheaper or cleaner, each off by default: an occupancy grid that skips empty space
(``occupancy``, Instant-NGP / nerfacc), coarse-to-fine rendering (``coarse_scale`` for the first
``coarse_fraction`` of the run, upsampled to the asked size: Magic3D's low-resolution first stage) and a total
variation prior on a TensoRF field's planes and lines (``plane_tv_weight``, TensoRF).

Exports: ``field.safetensors`` (the checkpoint ``gendistill eval-3d`` reloads) and the marching-cubes mesh
``scene_mesh.ply`` (plus ``.obj`` / ``.glb``, ``nerf.mesh.formats``) with the field's colours per vertex.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from gendistill.errors import UserError, check_range, key_path
from gendistill.recipe import ParamGroup, Update
from gendistill.render.cameras import Cameras
from gendistill.render.nerf.coarse import coarse_cameras, upsample_render
from gendistill.render.nerf.fields import FieldConfig, HashGridSizes
from gendistill.render.nerf.occupancy import OccupancyConfig, OccupancyGrid
from gendistill.render.nerf.priors import tensorf_total_variation

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
    fades as training goes (a buffer, so checkpoints keep it). Renders like the field it wraps (same ``config``)."""

    def __init__(self, field: nn.Module, strength: float, radius: float):
        super().__init__()
        self.field, self.radius = field, radius
        self.register_buffer("strength", torch.tensor(float(strength)))

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



def default_nerf_field() -> FieldConfig:
    """A small hash-grid field for the shapes world on a CPU (the objects fit the unit ball)."""
    return FieldConfig(architecture="hashgrid", bound=1.2, hidden_width=32,
                       hashgrid=HashGridSizes(num_levels=6, min_res=8, max_res=64, log2_hashmap_size=14))


@dataclass
class MeshConfig:
    """The triangle mesh a NeRF run exports (marching cubes on the density grid)."""

    resolution: int = 96
    """Grid points per axis over the field's cube."""
    density_threshold: float = 10.0
    """Iso-level of the density (per unit length): about where a ray's opacity crosses 0.5 within a few
    samples."""
    formats: tuple[str, ...] = ("ply", "obj", "glb")
    """Files written beside the checkpoint: ply (binary, vertex colours), obj and glb."""


@dataclass
class NerfSceneConfig:
    """A radiance field (nerfstudio's field components), volume rendered; needs ``gendistill[nerf]``."""

    KIND: ClassVar[str] = "nerf"
    FILES: ClassVar[tuple[str, ...]] = (f"{MESH_STEM}.ply", CHECKPOINT_FILE)
    """The files a run leaves for a viewer and for ``load`` (the last is the one ``load`` needs)."""

    num_samples: int = 32
    """Stratified samples per ray while training (jittered)."""
    num_importance: int = 0
    """Extra samples per ray drawn from a gradient-free first pass (0: off)."""
    eval_samples: int = 64
    """Samples per ray of the evaluation, turntable and export renders (deterministic)."""
    lr: float | None = None
    """Adam learning rate of every parameter; None: the field's suggested rates (its architecture's
    ``encoder_lr`` for the encoder, ``head_lr`` for the MLP heads)."""
    lr_final: float = 0.3
    """The rates decay exponentially to this fraction of their start over the run."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's betas."""
    initial_density: float = 0.01
    """Density of the fresh field everywhere (its density head's bias is shifted to give it): an empty cube,
    not a grey fog, at the start."""
    density_blob: float = 8.0
    """Density added at the centre while training, ``blob * (1 - |x| / blob_radius)`` inside that radius
    (DreamFusion's and Magic3D's initial blob: the first renders show an object, not empty space); 0: off."""
    blob_radius: float = 0.6
    """Radius of that blob."""
    blob_fraction: float = 0.5
    """The blob fades linearly to nothing over this fraction of the run, so the final field (what is saved,
    evaluated and meshed) needs no blob."""
    opacity_weight: float = 0.0
    """Weight of the mean rendered opacity added to the loss (a sparsity prior against fog; 0: off)."""
    chunk: int = 8192
    """Rays through the field at a time (memory)."""
    checkpoint: bool = True
    """Recompute each chunk's activations in the backward pass: less memory, one more pass of the field."""
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    """An occupancy grid that skips empty space in training renders (``resolution`` 0: off)."""
    coarse_scale: float = 1.0
    """Training renders of the first ``coarse_fraction`` of the run are made at this fraction of the asked
    size, then upsampled to it (Magic3D's coarse stage: cheap early steps shape the object); 1: off."""
    coarse_fraction: float = 0.0
    """Fraction of the run rendered at ``coarse_scale``."""
    plane_tv_weight: float = 0.0
    """Weight of the total variation of a TensoRF field's planes and lines (TensoRF's smoothness prior: mean
    squared difference of neighbouring cells); 0: off, and no effect on other architectures."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """The exported mesh."""
    # last: from here on the class body's ``field`` is this attribute, not dataclasses.field
    field: FieldConfig = field(default_factory=default_nerf_field)
    """Architecture (hashgrid, tensorf-vm, tensorf-cp, mlp), cube and sizes of the field."""

    def check_installed(self) -> None:
        """A UserError when what this kind needs is not installed (checked before a run, not at load)."""
        if importlib.util.find_spec("nerfstudio") is None:
            raise UserError("the nerf scene needs nerfstudio's field components: pip install 'gendistill[nerf]'")

    def check(self, path: str) -> None:
        for name in ("num_samples", "eval_samples", "chunk", "mesh.resolution"):
            check_range(key_path(path, name), _get(self, name), 1)
        for name in ("num_importance", "density_blob", "opacity_weight", "mesh.density_threshold"):
            check_range(key_path(path, name), _get(self, name), 0.0)
        check_range(key_path(path, "blob_radius"), self.blob_radius, 1e-6)
        check_range(key_path(path, "blob_fraction"), self.blob_fraction, 0.0, 1.0)
        check_range(key_path(path, "initial_density"), self.initial_density, 1e-8)
        check_range(key_path(path, "coarse_scale"), self.coarse_scale, 1e-3, 1.0)
        check_range(key_path(path, "coarse_fraction"), self.coarse_fraction, 0.0, 1.0)
        check_range(key_path(path, "plane_tv_weight"), self.plane_tv_weight, 0.0)
        self.occupancy.check(key_path(path, "occupancy"))

    def build(self, generator: torch.Generator, device: torch.device, total_steps: int) -> NerfScene:
        """A fresh field (seeded from ``generator``), the blob at full strength."""
        from gendistill.render.nerf import build_field

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        field = build_field(self.field, seed=seed).to(device)
        set_initial_density(field, self.initial_density)
        return NerfScene(field, self, total_steps, self.density_blob)

    def load(self, run_dir: Path) -> NerfScene:
        """The field a run wrote to ``run_dir`` (for evaluation)."""
        from gendistill.render.nerf import load_field

        return NerfScene(load_field(Path(run_dir) / CHECKPOINT_FILE), self)


def _get(config, dotted: str):
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


class NerfScene:
    """A radiance field under optimisation (or loaded for evaluation: ``total_steps`` 0)."""

    kind = "nerf"

    def __init__(self, field: nn.Module, config: NerfSceneConfig, total_steps: int = 0, blob: float = 0.0):
        self.field, self.config, self.total_steps = field, config, total_steps
        device = next(field.parameters()).device
        self.trainee = BlobField(field, blob, config.blob_radius).to(device)
        self.mesh = None
        self.step = 0
        """The step the next training render belongs to (the coarse-to-fine stage reads it)."""
        o = config.occupancy
        self.occupancy = (OccupancyGrid(field.config.bound, o.resolution, o.threshold, o.dilation, o.march_steps,
                                        device) if o.resolution > 0 and total_steps > 0 else None)

    def parameter_groups(self) -> tuple[ParamGroup, ...]:
        """The field's groups (encoder, heads) at its suggested rates or ``lr``, decaying to ``lr_final``."""
        c = self.config
        return tuple(ParamGroup(g.get("name", f"group{i}"), list(g["params"]), g["lr"] if c.lr is None else c.lr,
                                c.lr_final) for i, g in enumerate(self.field.parameter_groups()))

    def modules(self) -> dict[str, nn.Module]:
        return {"field": self.trainee}

    def render(self, cameras: Cameras, background: Tensor, generator: torch.Generator | None = None) -> NerfRender:
        from gendistill.render.nerf import render_cameras

        c = self.config
        small = coarse_cameras(cameras, c.coarse_scale) if self.in_coarse_stage() else cameras
        rgb, alpha = render_cameras(self.trainee, small, c.num_samples, background, chunk=c.chunk,
                                    generator=generator, num_importance=c.num_importance,
                                    occupancy=self.occupancy, checkpoint_chunks=c.checkpoint)
        if small is not cameras:
            rgb, alpha = upsample_render(rgb, alpha, cameras.height, cameras.width)
        return NerfRender(rgb, alpha)

    def in_coarse_stage(self) -> bool:
        """Whether this step's training renders are made small (the first ``coarse_fraction`` of the run)."""
        c = self.config
        return c.coarse_scale < 1.0 and self.step < c.coarse_fraction * self.total_steps

    @torch.no_grad()
    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        """The field alone (no blob), deterministic samples."""
        from gendistill.render.nerf import render_cameras

        c = self.config
        return render_cameras(self.field, cameras, c.eval_samples, background, chunk=c.chunk,
                              num_importance=c.num_importance)

    def regularisation(self, render: NerfRender, step: int) -> Tensor | None:
        """The opacity penalty (a sparsity prior against fog) and the planes' total variation, when weighted."""
        c, terms = self.config, []
        if c.opacity_weight > 0:
            terms.append(c.opacity_weight * render.alpha.mean())
        if c.plane_tv_weight > 0:
            tv = tensorf_total_variation(self.field.encoder)
            if tv is not None:
                terms.append(c.plane_tv_weight * tv)
        return sum(terms) if terms else None

    def before_backward(self, step: int, render: NerfRender, cameras: Cameras) -> None:
        pass

    def after_update(self, update: Update, render: NerfRender, cameras: Cameras) -> dict[str, float]:
        """Fade the blob, refresh the occupancy grid on its schedule; logs the mean opacity of the renders (and
        the share of occupied cells)."""
        c = self.config
        fade_steps = c.blob_fraction * self.total_steps
        strength = c.density_blob * max(0.0, 1.0 - (update.step + 1) / fade_steps) if fade_steps > 0 else 0.0
        self.trainee.strength.fill_(strength)
        self.step = update.step + 1
        logged = {"mean_alpha": render.alpha.detach().mean().item()}
        if self.occupancy is not None:
            if update.step % c.occupancy.update_every == 0:
                # a generator of the step's own: the jitter repeats exactly on resume
                self.occupancy.update(self.trainee.density, torch.Generator().manual_seed(update.step))
            logged["occupied"] = self.occupancy.fraction
        return logged

    def extra_state(self) -> dict[str, Tensor]:
        """The step and the occupancy bits, so that a resumed run renders as the uninterrupted one would."""
        state = {"nerf.step": torch.tensor(self.step)}
        if self.occupancy is not None:
            state["nerf.occupied"] = self.occupancy.occupied.clone()
        return state

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if "nerf.step" in state:
            self.step = int(state["nerf.step"])
        if self.occupancy is not None and "nerf.occupied" in state:
            self.occupancy.occupied = state["nerf.occupied"].to(self.occupancy.occupied.device).bool()

    def export(self, out_dir: Path) -> list[Path]:
        """``scene_mesh.ply`` (and the other mesh formats), then ``field.safetensors``."""
        from gendistill.render.nerf import save_field
        from gendistill.render.nerf.mesh import extract_mesh, save_mesh

        m = self.config.mesh
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
