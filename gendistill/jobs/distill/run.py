"""``gendistill distill``: train a few-step student from a diffusers teacher and export it for diffusers.

The output folder gets ``pipeline/`` (the student, loadable by stock diffusers), ``metrics.json`` and the
teacher-vs-student table, ``grid.png`` (teacher and student on the same seeds and prompts),
``curves.png`` (losses and quality over training), ``config.yaml`` (the resolved config) and
``checkpoints/`` (for ``--resume``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gendistill.backends.loading import load_pipeline, quiet_pipeline_notices
from gendistill.backends.student_card import StudentCard
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import save_config
from gendistill.devices import pick_device
from gendistill.jobs.distill.config import DistillConfig
from gendistill.jobs.distill.data import ImageFolderBatches, PromptListBatches, ShapesBatches
from gendistill.distill.export import export_student, student_scheduler
from gendistill.jobs.distill.model_card import write_model_card
from gendistill.distill.recipes import BoundRecipe
from gendistill.jobs.distill.report import DistillReport, final_report
from gendistill.errors import UserError
from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.run_dir import prepare_out_dir
from gendistill.train.trainer import Trainer, step_generator


@dataclass(frozen=True)
class DistillResult:
    out_dir: Path
    pipeline: Path
    train_seconds: float
    report: DistillReport | None


def make_batches(config: DistillConfig, teacher: TextToImageModel):
    data = config.data
    if data.source == "shapes":
        return ShapesBatches(teacher, data.batch_size, data.with_latents, data.view_phrase_prob)
    if data.source == "images":
        return ImageFolderBatches(teacher, data.image_folder or "", data.batch_size)
    if not data.prompts_file or not Path(data.prompts_file).is_file():
        raise UserError(f"data.prompts_file {data.prompts_file!r} does not exist (needed by data.source 'prompts')")
    prompts = [line.strip() for line in Path(data.prompts_file).read_text().splitlines() if line.strip()]
    return PromptListBatches(teacher, prompts, data.batch_size)


def student_model(teacher: TextToImageModel, bound: BoundRecipe, unet) -> TextToImageModel:
    """The teacher pipeline with the student UNet and scheduler, in memory (for evaluation)."""
    pipe = teacher.pipe
    scheduler = student_scheduler(dict(pipe.scheduler.config), bound.sampling)
    with quiet_pipeline_notices():
        return TextToImageModel(type(pipe)(**{**pipe.components, "unet": unet, "scheduler": scheduler}))


def run_distill(config: DistillConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                command: str | None = None) -> DistillResult:
    """Train, export ``out_dir/pipeline`` with its model card, and (on the shapes world) measure teacher vs
    student; ``command`` is recorded in the card."""
    out_dir = prepare_out_dir(out_dir)
    save_config(config, out_dir / "config.yaml")
    teacher = TextToImageModel(load_pipeline(config.teacher, device=pick_device(config.device)))
    if teacher.family != "vp":
        raise UserError("step distillation needs a UNet teacher (Stable Diffusion 1.x/2.x/XL-style)")
    batches = make_batches(config, teacher)
    bound = config.recipe.build(teacher, lambda: batches(0, step_generator(config.trainer.seed, -1)))
    eval_fn = _eval_fn(config, teacher, bound, out_dir / "samples") if _evaluates(config) else None
    trainer = Trainer(bound.recipe, config.trainer, out_dir, batches, eval_fn, progress=progress)
    result = trainer.fit(resume=resume)
    weights = trainer.ema.shadow if trainer.ema is not None else None
    pipeline = export_student(teacher.pipe, bound.export_unet(weights), bound.sampling, out_dir / "pipeline")
    card = _write_student_card(pipeline, config, bound, result.seconds)
    plot_curves(result.history, out_dir / "curves.png", title=f"{config.recipe.KIND} on {config.teacher}")
    report = None
    if config.data.source == "shapes":
        student = TextToImageModel(load_pipeline(str(pipeline), device=pick_device(config.device)))
        report = final_report(config, teacher, student, bound, out_dir, result.seconds)
    write_model_card(pipeline, config, card, report, command)
    return DistillResult(out_dir, pipeline, result.seconds, report)


def _evaluates(config: DistillConfig) -> bool:
    return config.data.source == "shapes" and config.eval.during_training_samples >= 2


def _eval_fn(config: DistillConfig, teacher: TextToImageModel, bound: BoundRecipe, samples_dir: Path):
    """Quality of the current student, plus a grid of its samples in samples_dir/step-NNNNNNN.png."""
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, evaluate_model

    evaluator = ShapesEvaluator.load()

    def evaluate(step: int) -> dict[str, float]:
        bound.student_unet.eval()
        model = student_model(teacher, bound, bound.export_unet())
        images: list = []
        q = evaluate_model(model, evaluator, bound.default_steps, "auto", bound.guidance,
                           config.eval.during_training_samples, seed=10_000, images_out=images)
        save_png(make_grid(images[0][:16], columns=8), samples_dir / f"step-{step:07d}.png")
        bound.student_unet.train()
        return {"prompt_accuracy": q.prompt_accuracy, "fid": q.fid, "diversity": q.diversity}

    return evaluate


def _write_student_card(pipeline: Path, config: DistillConfig, bound: BoundRecipe, seconds: float) -> StudentCard:
    """``gendistill.json`` beside the diffusers files: how to sample this student (read by eval/demo)."""
    card = StudentCard(recipe=config.recipe.KIND, steps=bound.default_steps, max_steps=bound.max_steps,
                       guidance=float(bound.guidance), teacher=config.teacher, train_seconds=round(seconds, 1),
                       device=str(pick_device(config.device)), threads=torch.get_num_threads(),
                       written=time.strftime("%Y-%m-%d %H:%M:%S"))
    card.write(pipeline)
    return card
