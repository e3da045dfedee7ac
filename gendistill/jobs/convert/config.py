"""Configs of ``gendistill fit-nerf`` and ``gendistill convert-nerf`` (``--set key=value`` overrides load into them)."""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Literal

from gendistill.config import load_config
from gendistill.convert.fit import FitConfig
from gendistill.convert.pvd import PVDConfig
from gendistill.convert.to_gaussians import SplatConfig
from gendistill.errors import UserError, check_range, key_path
from gendistill.render.nerf import ARCHITECTURES, FieldConfig

TARGETS = ARCHITECTURES + ("gaussians",)
"""What convert-nerf converts to."""


@dataclass
class TrainerSection:
    """The trainer settings of a NeRF job (its steps come from the recipe's section, its seed from ``seed``)."""

    nan_policy: Literal["raise", "skip"] = "raise"
    """A non-finite loss or gradient: stop the run (raise) or skip that update (skip)."""
    max_bad_steps: int = 10
    """With nan_policy skip: stop after this many skipped updates in a row."""
    checkpoint_every: int = 250
    """Write a checkpoint to OUT/checkpoints every this many steps (0: only at the end); --resume continues."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    eval_every: int = 0
    """Held-out PSNR every this many steps, into the curves (0: ten times over the run)."""
    log_every: int = 10
    """Record the losses in the curves every this many steps."""
    grad_clip: float | None = None
    """Clip each optimizer's gradient norm to this (None: no clipping)."""

    def check(self, path: str) -> None:
        for name, low in (("max_bad_steps", 1), ("checkpoint_every", 0), ("keep_checkpoints", 1),
                          ("eval_every", 0), ("log_every", 1)):
            check_range(key_path(path, name), getattr(self, name), low)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise UserError(f"{key_path(path, 'grad_clip')} must be > 0 or null (no clipping), got {self.grad_clip:g}")


@dataclass
class FitNerfConfig:
    """gendistill fit-nerf."""

    field: FieldConfig = dataclass_field(default_factory=FieldConfig)
    """The field to fit."""
    fit: FitConfig = dataclass_field(default_factory=FitConfig)
    """The fit: steps, rays per step, samples per ray, learning rates."""
    trainer: TrainerSection = dataclass_field(default_factory=TrainerSection)
    """NaN policy, checkpoints, evaluation and logging of the loop."""
    views: int = 60
    """Training views rendered for a --prompt (shapes world)."""
    holdout_views: int = 8
    """Held-out views for the metrics (a --prompt: extra renders; a --data folder: every n-th frame)."""
    resolution: int = 64
    """Image size of the shapes renders."""
    seed: int = 0
    """Seeds the field, the cameras and the ray sampling."""

    def __post_init__(self) -> None:
        check_range("views", self.views, 1, None)
        check_range("holdout_views", self.holdout_views, 1, None)
        check_range("resolution", self.resolution, 4, None)


@dataclass
class ConvertConfig:
    """gendistill convert-nerf."""

    student: FieldConfig = dataclass_field(default_factory=FieldConfig)
    """The student field (its architecture comes from --to)."""
    pvd: PVDConfig = dataclass_field(default_factory=PVDConfig)
    """NeRF -> NeRF distillation."""
    splats: SplatConfig = dataclass_field(default_factory=SplatConfig)
    """NeRF -> Gaussians."""
    fit: FitConfig = dataclass_field(default_factory=FitConfig)
    """Gaussians -> NeRF: fitting the field to the splats' renders."""
    trainer: TrainerSection = dataclass_field(default_factory=TrainerSection)
    """NaN policy, checkpoints, evaluation and logging of the loop."""
    views: int = 60
    """Cameras on a sphere around the origin whose rays (or the teacher's renders) the student learns from."""
    holdout_views: int = 8
    """Further cameras for the metrics."""
    resolution: int = 64
    """Image size of those cameras."""
    camera_distance: float = 4.0
    """Their distance from the origin (the shapes world's rig)."""
    fov_deg: float = 35.0
    """Their vertical field of view."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour behind the object."""
    seed: int = 0
    """Seeds the student, the cameras and the sampling."""


def load_fit_config(overrides: list[str]) -> FitNerfConfig:
    """The fit-nerf config: defaults, then ``key=value`` overrides."""
    return load_config(FitNerfConfig, None, overrides)


def load_convert_config(overrides: list[str]) -> ConvertConfig:
    """The convert-nerf config: defaults, then ``key=value`` overrides."""
    return load_config(ConvertConfig, None, overrides)
