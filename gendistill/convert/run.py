"""The jobs behind ``gendistill fit-nerf`` and ``gendistill convert-nerf``: configs, data, outputs.

fit-nerf writes ``field.safetensors``, ``metrics.json`` (PSNR on held-out views), ``renders.png`` (held-out
ground truth above the field's renders) and the resolved ``config.yaml``. convert-nerf writes the student
(``field.safetensors`` or ``scene.ply``), ``metrics.json`` (student vs teacher PSNR on held-out cameras),
``renders.png`` (teacher above student) and ``config.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import torch

from gendistill.config import load_config, save_config
from gendistill.convert.data import MultiViewData, load_transforms, shapes_views, sphere_cameras
from gendistill.convert.fit import FitConfig, field_psnr, fit_field, psnr, render_views
from gendistill.convert.pvd import PVDConfig, distil_field
from gendistill.convert.to_gaussians import (
    SplatConfig, fit_splats, place_splats, render_splats, splat_views, teacher_views,
)
from gendistill.errors import UserError, check_choice, check_range
from gendistill.render.images import make_grid, save_png
from gendistill.render.nerf import ARCHITECTURES, FieldConfig, build_field, load_field, save_field

TARGETS = ARCHITECTURES + ("gaussians",)
"""What convert-nerf converts to."""


@dataclass
class FitNerfConfig:
    """gendistill fit-nerf."""

    field: FieldConfig = dataclass_field(default_factory=FieldConfig)
    """The field to fit."""
    fit: FitConfig = dataclass_field(default_factory=FitConfig)
    """The training loop."""
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
    return load_config(FitNerfConfig, None, overrides)


def load_convert_config(overrides: list[str]) -> ConvertConfig:
    return load_config(ConvertConfig, None, overrides)


def fit_data(config: FitNerfConfig, prompt: str | None, data_dir: str | None) -> tuple[MultiViewData, MultiViewData]:
    """Training and held-out views of a shapes caption or a transforms.json folder."""
    if (prompt is None) == (data_dir is None):
        raise UserError("give exactly one of --prompt CAPTION (shapes world) or --data DIR (transforms.json)")
    if prompt is not None:
        generator = torch.Generator().manual_seed(config.seed)
        train = shapes_views(prompt, config.views, generator, config.resolution)
        return train, shapes_views(prompt, config.holdout_views, generator, config.resolution)
    data = load_transforms(data_dir)
    if len(data) < 2:
        raise UserError(f"{data_dir} needs at least 2 frames (training and held-out)")
    every = max(2, len(data) // config.holdout_views)
    held = torch.arange(len(data)) % every == every - 1
    return data.subset(torch.nonzero(~held)[:, 0]), data.subset(torch.nonzero(held)[:, 0])


def run_fit_nerf(config: FitNerfConfig, out: str | Path, prompt: str | None = None, data_dir: str | None = None,
                 progress: bool = True) -> dict:
    """Fit a field and write its outputs; returns the metrics."""
    out = Path(out)
    train, holdout = fit_data(config, prompt, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    radiance = build_field(config.field, seed=config.seed)
    result = fit_field(radiance, train, config.fit, torch.Generator().manual_seed(config.seed), progress=progress,
                       eval_data=holdout)
    save_field(radiance, out / "field.safetensors")
    renders = render_views(radiance, holdout, config.fit.num_samples)
    metrics = {"architecture": config.field.architecture, "psnr_holdout": psnr(renders, holdout.images),
               "psnr_train": field_psnr(radiance, train.subset(slice(0, 8)), config.fit.num_samples),
               "steps": result.steps, "seconds": result.seconds, "train_views": len(train),
               "holdout_views": len(holdout)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_png(make_grid(torch.cat([holdout.images, renders]), columns=len(holdout)), out / "renders.png")
    return metrics


def _convert_cameras(config: ConvertConfig, n: int, generator: torch.Generator):
    return sphere_cameras(n, generator, size=config.resolution, distance=config.camera_distance,
                          fov_deg=config.fov_deg)


def run_convert(config: ConvertConfig, teacher_path: str | Path, target: str, out: str | Path,
                progress: bool = True) -> dict:
    """Convert the teacher (a field checkpoint, or a splat .ply) into ``target`` and write the outputs."""
    check_choice("--to", target, TARGETS)
    out, teacher_path = Path(out), Path(teacher_path)
    from_splats = teacher_path.suffix.lower() == ".ply"
    if from_splats and target == "gaussians":
        raise UserError("the teacher is already Gaussians (.ply); convert it --to a field architecture")
    teacher = _load_teacher(teacher_path, from_splats)
    generator = torch.Generator().manual_seed(config.seed)
    cameras = _convert_cameras(config, config.views, generator)
    holdout = _convert_cameras(config, config.holdout_views, generator)
    background = torch.tensor(config.background)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    if from_splats:
        student, seconds = _splats_to_field(teacher, target, cameras, background, config, generator, progress)
        teacher_images = render_splats(teacher, holdout, background)
    elif target == "gaussians":
        student, seconds = _field_to_splats(teacher, cameras, background, config, generator, progress)
        teacher_images = teacher_views(teacher, holdout, background).images
    else:
        student, seconds = _field_to_field(teacher, target, cameras, background, config, generator, progress)
        teacher_images = teacher_views(teacher, holdout, background).images
    if target == "gaussians":
        from gendistill.render.ply import save_ply

        save_ply(student, out / "scene.ply")
        student_images = render_splats(student, holdout, background)
    else:
        save_field(student, out / "field.safetensors")
        student_images = teacher_views(student, holdout, background).images
    metrics = {"teacher": str(teacher_path), "to": target, "psnr_vs_teacher": psnr(student_images, teacher_images),
               "seconds": seconds, "holdout_views": config.holdout_views}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_png(make_grid(torch.cat([teacher_images, student_images]), columns=len(holdout)), out / "renders.png")
    return metrics


def _load_teacher(path: Path, from_splats: bool):
    if from_splats:
        from gendistill.render.ply import load_ply

        return load_ply(path)
    return load_field(path)


def _field_to_field(teacher, target, cameras, background, config, generator, progress):
    student_config = FieldConfig(**{**vars(config.student), "architecture": target, "bound": teacher.config.bound})
    student = build_field(student_config, seed=config.seed)
    result = distil_field(teacher, student, cameras, background, config.pvd, generator, progress=progress)
    return student, result.seconds


def _field_to_splats(teacher, cameras, background, config, generator, progress):
    splats = place_splats(teacher, cameras, config.splats, generator)
    targets = teacher_views(teacher, cameras, background, config.splats.num_samples)
    seconds = fit_splats(splats, targets, config.splats, generator, progress=progress)
    return splats, seconds


def _splats_to_field(splats, target, cameras, background, config, generator, progress):
    data = splat_views(splats, cameras, background)
    student_config = FieldConfig(**{**vars(config.student), "architecture": target})
    student = build_field(student_config, seed=config.seed)
    result = fit_field(student, data, config.fit, generator, progress=progress)
    return student, result.seconds
