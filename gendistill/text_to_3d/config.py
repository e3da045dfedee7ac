"""The configuration of a ``gendistill text-to-3d`` run (YAML files in configs/text-to-3d/ load into it).

Steps are 0-based optimisation steps, as in gsplat's strategies. Defaults are tuned for the shipped shapes
teacher (64x64 images) on a CPU: a few minutes for one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from gendistill.config import load_config
from gendistill.render.cameras import DISTANCE, FOV_DEG
from gendistill.render.nerf.fields import FieldConfig, HashGridSizes
from gendistill.render.rig import ELEVATION_RANGE_DEG
from gendistill.score.guidance import CSDConfig, NPGConfig, SDSConfig
from gendistill.score.policies import Decreasing
from gendistill.score.vsd import VSDConfig

REPRESENTATIONS = ("gaussians", "nerf")
"""What text-to-3D can optimise: 3D Gaussians, or a NeRF (needs the ``nerf`` extra)."""


@dataclass
class CameraConfig:
    """Where the training cameras are drawn (the default orbit rig: the shapes world's sphere of cameras), and
    how each view's prompt is made."""

    elevation_range_deg: tuple[float, float] = ELEVATION_RANGE_DEG
    """Elevations drawn uniformly, in degrees (azimuths are uniform in [0, 360))."""
    distance: float = DISTANCE
    """Distance from the camera to the origin."""
    fov_deg: float = FOV_DEG
    """Vertical field of view in degrees."""
    view_dependent_prompts: bool = True
    """Add the camera's view phrase ("front view", ...) to the prompt, with the ``view_prompts`` template."""
    view_prompts: Literal["auto", "shapes", "suffix"] = "auto"
    """The template of each view's prompt: ``suffix`` appends ", <view phrase>" to any prompt (DreamFusion);
    ``shapes`` rebuilds a shapes caption ("a red cube, side view"; the prompt must be one, and the run is then
    evaluated against the analytic object); ``auto`` is ``shapes`` for a gendistill model (its folder has
    gendistill.json, as the shipped shapes teacher and students do) and ``suffix`` for any other model."""


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
class OptimConfig:
    """Adam on the Gaussians' parameter groups (``GaussianParams.parameter_groups``), one optimiser each."""

    lr: LearningRates = field(default_factory=LearningRates)
    """Learning rates by parameter group."""
    betas: tuple[float, float] = (0.99, 0.999)
    """Adam's betas; a beta1 near 1 averages the noisy score-distillation gradient over more steps."""
    means_lr_final: float = 0.1
    """The means' learning rate decays exponentially to this fraction of its start (DreamGaussian)."""
    lr_final: float = 1.0
    """Every other group's learning rate decays exponentially to this fraction (1: constant); a decay
    averages out the noise of the score-distillation gradient in the colours."""
    fake_score_lr: float = 1e-3
    """Adam learning rate of VSD's fake score (LoRA and camera MLP); unused by other methods."""
    tv_weight: float = 500.0
    """Weight of the total variation of the surface colour in the renders (alpha-weighted mean absolute
    difference of neighbouring pixels; the silhouette's edge is exempt), added to the loss: a smoothness
    prior against the score's noisy textures (0: off)."""
    grad_blur_px: float = 1.0
    """Std (pixels) of a Gaussian blur applied to the guidance's gradient on the renders: it removes the
    pixel-scale patterns the VAE encoder's backward pass stamps on them (0: off)."""
    grad_clip: float | None = None
    """Clip the Gaussians' gradient norm per group to this (None: no clipping)."""


@dataclass
class DefaultStrategyConfig:
    """gsplat's DefaultStrategy (3DGS adaptive density control: clone, split, prune)."""

    KIND: ClassVar[str] = "default"

    refine_start: int = 100
    """First step that may grow or prune."""
    refine_stop: int = 10_000
    """No growth from this step on (the prune-only phase also ends it)."""
    refine_every: int = 50
    """Steps between refinements."""
    grow_grad2d: float = 2e-2
    """Mean screen-space gradient above which a Gaussian is cloned or split."""
    grow_scale3d: float = 0.01
    """Gaussians smaller than this (times the scene radius) are cloned, larger ones split."""
    prune_opacity: float = 0.005
    """Gaussians less opaque than this are pruned."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this (times the scene radius) are pruned."""
    reset_every: int = 0
    """Steps between opacity resets (0: never)."""
    max_gaussians: int = 10_000
    """No refinement that could take the scene past this many Gaussians (a refinement at most doubles them)."""


@dataclass
class MCMCStrategyConfig:
    """gsplat's MCMCStrategy (3DGS as Markov chain Monte Carlo); needs gsplat's CUDA kernels."""

    KIND: ClassVar[str] = "mcmc"

    cap_max: int = 20_000
    """Largest number of Gaussians."""
    noise_lr: float = 5e5
    """Scale of the position noise (times the means' learning rate)."""
    refine_start: int = 100
    """First step that relocates and adds Gaussians."""
    refine_stop: int = 10_000
    """No relocation from this step on (the prune-only phase also ends it)."""
    refine_every: int = 50
    """Steps between relocations."""
    min_opacity: float = 0.005
    """Gaussians less opaque than this are relocated."""


@dataclass
class PruneConfig:
    """The prune-only final phase (HumanGaussian): no more growth, remove oversized Gaussians and floaters."""

    after: int | None = 450
    """Step from which growth stops and only pruning runs; None: no prune-only phase."""
    every: int = 50
    """Steps between prunings in that phase (the last step always prunes)."""
    max_scale: float = 0.15
    """Prune Gaussians whose largest axis exceeds this fraction of the scene radius."""
    min_opacity: float = 0.05
    """Prune Gaussians less opaque than this."""
    floater_factor: float = 6.0
    """Prune Gaussians whose distance to their k-th nearest neighbour exceeds this times the median one."""
    floater_neighbours: int = 4
    """k of that test."""


@dataclass
class DensifyConfig:
    """Adaptive density control: a gsplat strategy, then the prune-only phase."""

    strategy: DefaultStrategyConfig | MCMCStrategyConfig | None = field(default_factory=DefaultStrategyConfig)
    """``kind:`` default or mcmc (CUDA only); null: never grow."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """The prune-only phase."""


@dataclass
class TurntableConfig:
    """The 360-degree turntable written at the end of a run."""

    frames: int = 36
    """Frames around the object."""
    elevation_deg: float = 20.0
    """Camera elevation in degrees."""
    size: int = 128
    """Frame width and height in pixels."""
    fps: int = 12
    """Frames per second of the GIF (and MP4)."""


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
class NerfConfig:
    """The ``nerf`` representation: a radiance field, volume rendered (used when representation is nerf)."""

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
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """The exported mesh."""
    # last: from here on the class body's ``field`` is this attribute, not dataclasses.field
    field: FieldConfig = field(default_factory=default_nerf_field)
    """Architecture (hashgrid, tensorf-vm, tensorf-cp, mlp), cube and sizes of the field."""


def default_method() -> SDSConfig:
    """SDS as tuned for the shapes teacher (SDSConfig's own defaults are DreamFusion's, for Stable Diffusion)."""
    return SDSConfig(guidance_scale=7.5, timesteps=Decreasing(t_start=0.98, t_end=0.2, shape="sqrt", jitter=0.1))


@dataclass
class Text3DConfig:
    """A text-to-3D run: a diffusion model as the loss on renders of 3D Gaussians."""

    prompt: str = ""
    """The text prompt (the command's PROMPT argument replaces it)."""
    model: str = "assets/shapes-teacher"
    """Diffusers text-to-image folder or hub id whose score guides the optimisation."""
    method: SDSConfig | VSDConfig | CSDConfig | NPGConfig = field(default_factory=default_method)
    """Score distillation method; ``kind:`` picks sds, vsd, csd or npg."""
    representation: str = "gaussians"
    """What is optimised: gaussians (3D Gaussian splats) or nerf (a radiance field; the nerf extra)."""
    iterations: int = 600
    """Optimisation steps."""
    batch_size: int = 4
    """Cameras (rendered views) per step."""
    resolution: int | None = None
    """Render width and height in pixels; None: the model's image size."""
    scene_radius: float = 1.0
    """Radius of the region the object lives in (the shapes world: the unit ball); scales lrs and pruning."""
    cameras: CameraConfig = field(default_factory=CameraConfig)
    """Training cameras."""
    init: InitConfig = field(default_factory=InitConfig)
    """Initial Gaussians (representation gaussians)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The Gaussians' optimisers; its tv_weight and grad_blur_px shape the loss of every representation."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """Densification and the prune-only phase."""
    nerf: NerfConfig = field(default_factory=NerfConfig)
    """The radiance field, when representation is nerf."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] behind the Gaussians (white, as the shapes world)."""
    turntable: TurntableConfig = field(default_factory=TurntableConfig)
    """The turntable animation."""
    seed: int = 0
    """Seed of the initialisation, cameras, timesteps and noise."""
    progress: bool = True
    """Show a progress bar with ETA and the live loss."""
    device: str = "auto"
    """torch device; auto picks cuda when available."""


def load_text3d_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Text3DConfig:
    """``load_config`` for text-to-3D: the YAML file and ``key=value`` overrides change only the keys they
    name, on top of the tuned defaults (a section whose ``kind`` differs from the default's replaces it)."""
    return load_config(Text3DConfig, path, overrides)
