"""``gendistill convert-nerf``: convert a radiance field to another architecture (PVD) or to 3D Gaussians, or
3D Gaussians to a field, on the one trainer.

The run folder gets the student (``field.safetensors`` or ``scene.ply``), ``metrics.json`` (student vs
teacher PSNR on held-out cameras), ``renders.png`` (teacher above student), ``curves.png``, the resolved
``config.yaml`` and ``checkpoints/`` (``resume`` continues exactly: the student is rebuilt from the same seed
and the teacher reloaded, then the checkpoint restores the student, its optimizers and PVD-AL's memory). A
run that ends early writes the same outputs from its last state, with the reason in ``metrics.json["stopped"]``,
then re-raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gendistill.config import save_config
from gendistill.convert.data import sphere_cameras
from gendistill.convert.fit import FIELD_PHASE, NerfFitRecipe, field_optimizer
from gendistill.convert.measure import psnr, render_splats, splat_views, teacher_views
from gendistill.convert.pvd import STUDENT_PHASE, PVDRecipe
from gendistill.convert.to_gaussians import SPLATS_PHASE, SplatFitRecipe, place_splats, teacher_targets
from gendistill.errors import UserError, check_choice
from gendistill.jobs.convert.config import TARGETS, ConvertConfig
from gendistill.jobs.convert.fit_nerf import NerfJobResult
from gendistill.jobs.convert.training import RecipeRun, clear_checkpoints, train_recipe
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams
from gendistill.render.images import make_grid, save_png
from gendistill.render.nerf import FieldConfig, build_field, load_field, save_field
from gendistill.render.plots import plot_curves
from gendistill.run_dir import prepare_out_dir
from gendistill.train.trainer import OnStep, TrainResult


@dataclass(frozen=True)
class Conversion:
    """One conversion, built: the student, the trainer run that makes it, and the teacher's held-out renders."""

    student: nn.Module
    """A RadianceField, or GaussianParams for --to gaussians."""
    run: RecipeRun
    teacher_images: Tensor
    """The teacher's renders (C, 3, H, W) of the held-out cameras."""


def run_convert(config: ConvertConfig, teacher_path: str | Path, target: str, out: str | Path, progress: bool = True,
                resume: bool = False, on_step: OnStep | None = None,
                log: Callable[[str], None] | None = None) -> NerfJobResult:
    """Convert the teacher (a field checkpoint, or a splat .ply) into ``target`` and write the run folder (see
    the module docstring); ``log`` receives the resume and stop notices."""
    check_choice("--to", target, TARGETS)
    teacher_path = Path(teacher_path)
    from_splats = teacher_path.suffix.lower() == ".ply"
    if from_splats and target == "gaussians":
        raise UserError("the teacher is already Gaussians (.ply); convert it --to a field architecture")
    teacher = _load_teacher(teacher_path, from_splats)
    generator = torch.Generator().manual_seed(config.seed)
    cameras = _cameras(config, config.views, generator)
    holdout = _cameras(config, config.holdout_views, generator)
    background = torch.tensor(config.background)
    out = prepare_out_dir(out)
    save_config(config, out / "config.yaml")
    if not resume:
        clear_checkpoints(out)
    conversion = _build(teacher, from_splats, target, cameras, holdout, background, config, generator)
    student, teacher_images = conversion.student, conversion.teacher_images

    def write(result: TrainResult | None) -> NerfJobResult:
        images = _student_images(student, holdout, background)
        return _write_outputs(student, images, teacher_images, teacher_path, target, result, config, out)

    def on_stop(result: TrainResult) -> None:
        write(result)
        if log is not None:
            log(f"stopped ({result.stopped}) after {result.step} steps; wrote the outputs of that state to {out}")

    if conversion.run.steps == 0:
        return write(None)
    result = train_recipe(conversion.run, config.trainer, config.seed, out, resume=resume, progress=progress,
                          eval_fn=lambda step: {"psnr_vs_teacher": psnr(_student_images(student, holdout, background),
                                                                        teacher_images)},
                          on_step=on_step, on_stop=on_stop, log=log)
    return write(result)


def _load_teacher(path: Path, from_splats: bool):
    if from_splats:
        from gendistill.render.ply import load_ply

        return load_ply(path)
    return load_field(path)


def _cameras(config: ConvertConfig, n: int, generator: torch.Generator) -> Cameras:
    return sphere_cameras(n, generator, size=config.resolution, distance=config.camera_distance,
                          fov_deg=config.fov_deg)


def _build(teacher, from_splats: bool, target: str, cameras: Cameras, holdout: Cameras, background: Tensor,
           config: ConvertConfig, generator: torch.Generator) -> Conversion:
    """The student and its recipe for the route teacher -> target (``generator`` places splats and initialises
    PVD's projection; the training draws come from the trainer)."""
    if from_splats:  # Gaussians -> NeRF: fit a field to the splats' renders
        student = build_field(FieldConfig(**{**vars(config.student), "architecture": target}), seed=config.seed)
        recipe = NerfFitRecipe(student, splat_views(teacher, cameras, background), config.fit)
        run = RecipeRun(recipe, config.fit.steps, FIELD_PHASE, field_optimizer(), f"splats -> {target}")
        return Conversion(student, run, render_splats(teacher, holdout, background))
    teacher_images = teacher_views(teacher, holdout, background).images
    if target == "gaussians":
        splats = place_splats(teacher, cameras, config.splats, generator)
        targets = teacher_targets(teacher, cameras, background, config.splats.num_samples, generator)
        run = RecipeRun(SplatFitRecipe(splats, targets, config.splats), config.splats.steps, SPLATS_PHASE,
                        field_optimizer(), "nerf -> splats")
        return Conversion(splats, run, teacher_images)
    student_config = FieldConfig(**{**vars(config.student), "architecture": target, "bound": teacher.config.bound})
    student = build_field(student_config, seed=config.seed)
    recipe = PVDRecipe(teacher, student, cameras, background, config.pvd, generator)
    run = RecipeRun(recipe, config.pvd.steps, STUDENT_PHASE, field_optimizer(), f"pvd -> {target}")
    return Conversion(student, run, teacher_images)


def _student_images(student: nn.Module, holdout: Cameras, background: Tensor) -> Tensor:
    if isinstance(student, GaussianParams):
        return render_splats(student, holdout, background)
    return teacher_views(student, holdout, background).images


def _write_outputs(student: nn.Module, student_images: Tensor, teacher_images: Tensor, teacher_path: Path,
                   target: str, result: TrainResult | None, config: ConvertConfig, out: Path) -> NerfJobResult:
    """The student's file, metrics.json, renders.png and curves.png of its current state."""
    if target == "gaussians":
        from gendistill.render.ply import save_ply

        save_ply(student, out / "scene.ply")
    else:
        save_field(student, out / "field.safetensors")
    metrics = {"teacher": str(teacher_path), "to": target, "psnr_vs_teacher": psnr(student_images, teacher_images),
               "steps": result.step if result else 0, "seconds": result.seconds if result else 0.0,
               "holdout_views": config.holdout_views, "skipped_updates": result.skipped_updates if result else 0,
               "stopped": result.stopped if result else None,
               "resumed_from": str(result.resumed_from) if result and result.resumed_from else None}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    grid = make_grid(torch.cat([teacher_images, student_images]), columns=len(teacher_images))
    save_png(grid, out / "renders.png")
    if result is not None:
        plot_curves(result.history, out / "curves.png", title=f"{teacher_path.name} -> {target}")
    return NerfJobResult(out, metrics, result)
