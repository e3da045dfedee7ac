"""The configuration of a ``gendistill text-to-3d`` run (YAML files in configs/text-to-3d/ load into it).

Steps are 0-based optimisation steps, as in gsplat's strategies. Defaults are tuned for the shipped shapes
teacher (64x64 images) on a CPU: a few minutes for one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gendistill.config import load_config
from gendistill.diffusion.timesteps import Decreasing
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.render.cameras import DISTANCE, FOV_DEG
from gendistill.render.rig import ELEVATION_RANGE_DEG
from gendistill.render.scenes.gaussians import GaussianSceneConfig
from gendistill.render.scenes.nerf import NerfSceneConfig
from gendistill.score.csd import CSDConfig
from gendistill.score.npg import NPGConfig
from gendistill.score.sds import SDSConfig
from gendistill.score.structure_aware import StructureAwareSDSConfig
from gendistill.score.vsd import VSDConfig

REPRESENTATIONS = (GaussianSceneConfig.KIND, NerfSceneConfig.KIND)
"""The scene kinds text-to-3D can optimise: 3D Gaussians, or a NeRF (needs the ``nerf`` extra)."""


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

    def check(self, path: str) -> None:
        check_range(key_path(path, "distance"), self.distance, 1.0001)
        check_range(key_path(path, "fov_deg"), self.fov_deg, 1.0, 170.0)
        lo, hi = self.elevation_range_deg
        check_range(f"{key_path(path, 'elevation_range_deg')}[0]", lo, -89.0, 89.0)
        check_range(f"{key_path(path, 'elevation_range_deg')}[1]", hi, lo, 89.0)


@dataclass
class OptimConfig:
    """What the run adds to the scene's own optimisation: image priors on the renders, the guidance's rate."""

    fake_score_lr: float = 1e-3
    """Adam learning rate of the guidance's own phases (VSD's LoRA fake score and camera MLP)."""
    tv_weight: float = 500.0
    """Weight of the total variation of the surface colour in the renders (alpha-weighted mean absolute
    difference of neighbouring pixels; the silhouette's edge is exempt), added to the loss: a smoothness
    prior against the score's noisy textures (0: off)."""
    grad_blur_px: float = 1.0
    """Std (pixels) of a Gaussian blur applied to the guidance's gradient on the renders: it removes the
    pixel-scale patterns the VAE encoder's backward pass stamps on them (0: off)."""

    def check(self, path: str) -> None:
        for name in ("grad_blur_px", "tv_weight", "fake_score_lr"):
            check_range(key_path(path, name), getattr(self, name), 0.0)


@dataclass
class RunConfig:
    """Checkpoints and the NaN policy of the run (the trainer's)."""

    checkpoint_every: int = 100
    """Save a checkpoint every this many steps (and at the end); ``--resume`` continues from the newest."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    nan_policy: Literal["raise", "skip"] = "skip"
    """A non-finite loss or gradient: skip that step (skip) or stop (raise)."""
    max_bad_steps: int = 10
    """Stop after this many skipped steps in a row."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "checkpoint_every"), self.checkpoint_every, 0)
        check_range(key_path(path, "keep_checkpoints"), self.keep_checkpoints, 1)
        check_range(key_path(path, "max_bad_steps"), self.max_bad_steps, 1)


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

    def check(self, path: str) -> None:
        check_range(key_path(path, "frames"), self.frames, 1)
        check_range(key_path(path, "size"), self.size, 8)


def default_method() -> SDSConfig:
    """SDS as tuned for the shapes teacher (SDSConfig's own defaults are DreamFusion's, for Stable Diffusion)."""
    return SDSConfig(guidance_scale=7.5, timesteps=Decreasing(t_start=0.98, t_end=0.2, shape="sqrt", jitter=0.1))


@dataclass
class Text3DConfig:
    """A text-to-3D run: a diffusion model as the loss on the renders of a scene."""

    prompt: str = ""
    """The text prompt (the command's PROMPT argument replaces it)."""
    model: str = "shapes-teacher"
    """Diffusers text-to-image folder, shipped model (shapes-teacher) or hub id whose score guides the
    optimisation."""
    model_guidance: Literal["auto", "cfg"] = "auto"
    """How the model's guided score is made: ``auto`` as the model is meant to be guided (the scale embedded in a
    w-embedding student such as LCM or multi-CFG; the conditional prediction alone, one pass, for a student whose
    guidance is distilled in, such as DMD2 or progressive; classifier-free guidance otherwise); ``cfg``
    classifier-free guidance on a guidance-distilled student too (two passes)."""
    lora: str | None = None
    """A diffusers LoRA file or folder fused into ``model`` first (a LoRA student such as shapes-lcm-lora can
    also be given as the model itself: its gendistill.json names its base)."""
    lora_scale: float = 1.0
    """Strength of ``lora``."""
    method: SDSConfig | VSDConfig | CSDConfig | NPGConfig | StructureAwareSDSConfig = field(default_factory=default_method)
    """Score distillation method; ``kind:`` picks sds, vsd, csd, npg or sds-rgbd (structure-aware SDS: RGB and
    depth scores, for scenes that render depth)."""
    scene: GaussianSceneConfig | NerfSceneConfig = field(default_factory=GaussianSceneConfig)
    """What is optimised; ``kind:`` picks gaussians (3D Gaussian splats) or nerf (a radiance field; the nerf
    extra). Each kind has its own keys (``scene.init``, ``scene.densify``; ``scene.field``, ``scene.mesh``)."""
    iterations: int = 600
    """Optimisation steps."""
    batch_size: int = 4
    """Cameras (rendered views) per step."""
    resolution: int | None = None
    """Render width and height in pixels; None: the model's image size."""
    cameras: CameraConfig = field(default_factory=CameraConfig)
    """Training cameras."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Image priors on the renders and the guidance's own learning rate (the scene's rates are its own)."""
    run: RunConfig = field(default_factory=RunConfig)
    """Checkpoints (``--resume``) and the NaN policy."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] behind the object (white, as the shapes world)."""
    turntable: TurntableConfig = field(default_factory=TurntableConfig)
    """The turntable animation."""
    seed: int = 0
    """Seed of the initialisation, cameras, timesteps and noise."""
    progress: bool = True
    """Show a progress bar with ETA and the live loss."""
    device: str = "auto"
    """torch device; auto picks cuda when available."""

    @property
    def representation(self) -> str:
        """The scene's kind ("gaussians" or "nerf"), as reports and the demo name it."""
        return self.scene.KIND

    def check(self, path: str) -> None:
        """The run's own values (each section checks its own); the prompt is checked by the job."""
        check_range(key_path(path, "iterations"), self.iterations, 1)
        check_range(key_path(path, "batch_size"), self.batch_size, 1)
        if self.resolution is not None:
            check_range(key_path(path, "resolution"), self.resolution, 8)
        check_choice(key_path(path, "model_guidance"), self.model_guidance, ("auto", "cfg"))
        if getattr(self.method, "READS_DEPTH", False) and not getattr(self.scene, "RENDERS_DEPTH", False):
            raise UserError(f"{key_path(path, 'method.kind')}={self.method.KIND} scores the renders' depth, which a "
                            f"{self.scene.KIND} scene does not render; use scene.kind=gaussians")
        camera_dim = getattr(self.method, "camera_dim", 0)
        if camera_dim not in (0, 16):
            raise UserError(f"{key_path(path, 'method.camera_dim')} must be 16 (text-to-3d feeds 4x4 "
                            f"camera-to-world matrices) or 0, got {camera_dim}")


def load_text3d_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Text3DConfig:
    """``load_config`` for text-to-3D: the YAML file and ``key=value`` overrides change only the keys they
    name, on top of the tuned defaults (a section whose ``kind`` differs from the default's replaces it)."""
    return load_config(Text3DConfig, path, overrides)
