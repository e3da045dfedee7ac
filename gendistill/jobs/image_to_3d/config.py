"""The configuration of a ``gendistill image-to-3d`` run (YAML files in configs/image-to-3d/ load into it).

The scene, cameras, image priors, checkpoints and turntable are text-to-3D's own sections; what differs is
the model (an image- and camera-conditioned teacher), the method (``image-sds``) and the optional reference
view loss of the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gendistill.config import load_config
from gendistill.errors import check_range, key_path
from gendistill.jobs.text_to_3d.config import CameraConfig, OptimConfig, RunConfig, TurntableConfig
from gendistill.render.scenes.gaussians import GaussianSceneConfig
from gendistill.render.scenes.nerf import NerfSceneConfig
from gendistill.score.image_sds import ImageSDSConfig

REFERENCE_AZIMUTH_DEG = 0.0
REFERENCE_ELEVATION_DEG = 20.0
"""The camera the input image is assumed to be taken from when the reference loss is on: the shapes world's
front (azimuth 0, the object's +x face) at the turntable's elevation. Isotropic3D itself needs no camera."""


@dataclass
class ReferenceConfig:
    """The baseline's reference-view reconstruction loss (off in Isotropic3D: ``weight: 0``)."""

    weight: float = 0.0
    """Weight of the mean squared error between the render at the reference camera and the input image,
    added to the loss every step (0: off, the pure embedding-only SDS)."""
    azimuth_deg: float = REFERENCE_AZIMUTH_DEG
    """Azimuth of the camera the input image is assumed to come from."""
    elevation_deg: float = REFERENCE_ELEVATION_DEG
    """Elevation of that camera."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "weight"), self.weight, 0.0)
        check_range(key_path(path, "elevation_deg"), self.elevation_deg, -89.0, 89.0)


@dataclass
class Image3DConfig:
    """An image-to-3D run: an image-conditioned teacher's SDS on the renders of a scene."""

    image: str = ""
    """The input image (the command's IMAGE argument replaces it)."""
    model: str = "shapes-image-teacher"
    """Folder of an image- and camera-conditioned teacher (unet/ vae/ scheduler/), or a shipped name."""
    clip: str = ""
    """open_clip folder that embeds the image; empty: the one the teacher's gendistill.json names."""
    method: ImageSDSConfig = field(default_factory=ImageSDSConfig)
    """The guidance (``kind: image-sds``)."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """The baseline's reference-view loss (off by default)."""
    evaluate_caption: str = ""
    """A shapes caption ("a red sphere") to evaluate the result against (IoU, colour, prompt accuracy from 8
    held-out views); only the evaluation reads it, never the guidance. Empty: no evaluation."""
    scene: GaussianSceneConfig | NerfSceneConfig = field(default_factory=GaussianSceneConfig)
    """What is optimised; ``kind:`` gaussians or nerf (text-to-3D's scene keys)."""
    iterations: int = 600
    """Optimisation steps."""
    batch_size: int = 4
    """Cameras per step (the reference view, when on, comes on top)."""
    resolution: int | None = None
    """Render width and height in pixels; None: the model's image size."""
    cameras: CameraConfig = field(default_factory=lambda: CameraConfig(view_dependent_prompts=False))
    """Training cameras (text-to-3D's section; prompts are not used)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Image priors on the renders."""
    run: RunConfig = field(default_factory=RunConfig)
    """Checkpoints (``--resume``) and the NaN policy."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] behind the object."""
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
        return self.scene.KIND

    def check(self, path: str) -> None:
        check_range(key_path(path, "iterations"), self.iterations, 1)
        check_range(key_path(path, "batch_size"), self.batch_size, 1)
        if self.resolution is not None:
            check_range(key_path(path, "resolution"), self.resolution, 8)


def load_image3d_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Image3DConfig:
    """``load_config`` for image-to-3D: the file and overrides change only the keys they name."""
    return load_config(Image3DConfig, path, overrides)
