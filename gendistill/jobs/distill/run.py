"""``gendistill distill``: train a few-step student from a diffusers teacher and export it for diffusers.

The output folder gets ``pipeline/`` (the student, loadable by stock diffusers), for a LoRA student also
``lora/pytorch_lora_weights.safetensors`` (its adapters, for ``pipe.load_lora_weights``), ``metrics.json`` and the
teacher-vs-student table, ``grid.png`` (teacher and student on the same seeds and prompts),
``curves.png`` (losses and quality over training), ``config.yaml`` (the resolved config) and
``checkpoints/`` (for ``--resume``).

On several processes (``accelerate launch`` or torchrun) every process trains; afterwards only rank 0
exports, evaluates and writes, while the others wait for it. With ``trainer.distributed=fsdp`` the student
(or its EMA) is sharded, so its full weights are first gathered on every process (a collective) and rank 0
exports an unsharded copy built from the network's config.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import copy
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from gendistill.backends.loading import load_pipeline
from gendistill.backends.student_card import StudentCard
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import save_config
from gendistill.devices import pick_device
from gendistill.jobs.distill.config import DistillConfig
from gendistill.jobs.distill.data import ImageFolderBatches, PromptListBatches, ShapesBatches
from gendistill.distill.export import export_student, student_pipeline
from gendistill.jobs.distill.model_card import write_model_card
from gendistill.distill.recipes import BoundRecipe
from gendistill.jobs.distill.report import DistillReport, final_report
from gendistill.errors import UserError
from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.run_dir import prepare_out_dir
from gendistill.train import parallel
from gendistill.train.trainer import Trainer, step_generator

FINISH_TIMEOUT = timedelta(hours=24)
"""How long the other processes wait for rank 0's export and final evaluation (the default process group's
NCCL timeout is minutes; a rank 0 that fails releases them at once)."""


@dataclass(frozen=True)
class DistillResult:
    out_dir: Path
    pipeline: Path
    train_seconds: float
    report: DistillReport | None
    written: bool = True
    """False on the processes other than rank 0 of a multi-process run (rank 0 wrote the outputs)."""


def make_batches(config: DistillConfig, teacher: TextToImageModel):
    data = config.data
    if data.source == "shapes":
        return ShapesBatches(teacher, data.batch_size, data.with_latents, data.view_phrase_prob,
                             data.shapes_camera_distance, data.shapes_image)
    if data.source == "images":
        return ImageFolderBatches(teacher, data.image_folder or "", data.batch_size)
    if not data.prompts_file or not Path(data.prompts_file).is_file():
        raise UserError(f"data.prompts_file {data.prompts_file!r} does not exist (needed by data.source 'prompts')")
    prompts = [line.strip() for line in Path(data.prompts_file).read_text().splitlines() if line.strip()]
    return PromptListBatches(teacher, prompts, data.batch_size)


def student_model(teacher: TextToImageModel, bound: BoundRecipe, unet) -> TextToImageModel:
    """The teacher pipeline with the student UNet and scheduler, in memory (for evaluation)."""
    return TextToImageModel(student_pipeline(teacher.pipe, unet, bound.sampling, bound.pipeline_builder))


def run_distill(config: DistillConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                command: str | None = None, log: Callable[[str], None] | None = None) -> DistillResult:
    """Train, export ``out_dir/pipeline`` with its model card, and (on the shapes world) measure teacher vs
    student; ``command`` is recorded in the card. On several processes only rank 0 exports and writes (the
    others return a result without a report once it is done). A run that ends early (Ctrl-C, a divergence)
    keeps its checkpoint and, on one process, exports the student it has (``metrics.json`` says why it
    stopped), then re-raises; ``log`` hears which checkpoint a resume started from."""
    main = _process_state().is_main_process
    out_dir = prepare_out_dir(out_dir)
    if main:
        save_config(config, out_dir / "config.yaml")
    teacher = TextToImageModel(load_pipeline(config.teacher, device=pick_device(config.device)))  # the recipe
    # checks the teacher's family (UNet recipes: TeacherStudent; MeanFlow: a flow teacher)
    batches = make_batches(config, teacher)
    bound = config.recipe.build(teacher, lambda: batches(0, step_generator(config.trainer.seed, -1)))
    eval_fn = _eval_fn(config, teacher, bound, out_dir / "samples", main) if _evaluates(config) else None
    trainer = Trainer(bound.recipe, config.trainer, out_dir, batches, eval_fn, progress=progress, log=log)
    if main and _process_state().num_processes == 1:
        trainer.on_stop = lambda stopped: _write_stopped(config, teacher, bound, trainer, stopped, out_dir, command)
    result = trainer.fit(resume=resume)
    if parallel.world_size(trainer) == 1:
        return _finish(config, teacher, bound, _trained_unet(trainer, bound), result, out_dir, command)
    done = dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)
    try:
        unet = _trained_unet(trainer, bound)  # fsdp: a collective; None on ranks other than 0
        if main:
            return _finish(config, teacher, bound, unet, result, out_dir, command)
        return DistillResult(out_dir, out_dir / "pipeline", result.seconds, None, written=False)
    finally:
        dist.barrier(group=done)  # the others return once rank 0 wrote everything (or failed)


def _process_state():
    """accelerate's per-process state as the trainer's ``Accelerator`` will find it (``ACCELERATE_USE_CPU``:
    the CPU backend, as accelerate launch sets it), made before the teacher loads: it knows this process's
    rank and puts each process on its own CUDA device."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _finish(config: DistillConfig, teacher: TextToImageModel, bound: BoundRecipe, unet: nn.Module, result,
            out_dir: Path, command: str | None) -> DistillResult:
    """Export the trained UNet, write the student card, curves, final report and model card (one process)."""
    pipeline = _export(teacher, bound, unet, out_dir)
    card = _write_student_card(pipeline, config, bound, result.seconds)
    plot_curves(result.history, out_dir / "curves.png", title=f"{config.recipe.KIND} on {config.teacher}")
    report = None
    if config.data.source == "shapes":
        student = TextToImageModel(load_pipeline(str(pipeline), device=pick_device(config.device)))
        report = final_report(config, teacher, student, bound, out_dir, result.seconds)
    write_model_card(pipeline, config, card, report, command)
    return DistillResult(out_dir, pipeline, result.seconds, report)


def _export(teacher: TextToImageModel, bound: BoundRecipe, unet: nn.Module, out_dir: Path) -> Path:
    """``out_dir/pipeline`` (the trained UNet, any LoRA merged) and, for a LoRA student, ``out_dir/lora`` (its
    adapters alone, for ``pipe.load_lora_weights`` on the teacher or a fine-tune of it); both from ``unet``,
    the EMA when the run keeps one."""
    pipeline = export_student(teacher.pipe, bound.export_unet(unet), bound.sampling, out_dir / "pipeline",
                              bound.pipeline_builder)
    bound.export_lora(out_dir / "lora", unet, type(teacher.pipe))
    return pipeline


def _write_stopped(config: DistillConfig, teacher: TextToImageModel, bound: BoundRecipe, trainer: Trainer,
                   result, out_dir: Path, command: str | None) -> None:
    """What a stopped run keeps besides its checkpoint: the student as it is, its card, the curves and why."""
    pipeline = _export(teacher, bound, _trained_unet(trainer, bound), out_dir)
    card = _write_student_card(pipeline, config, bound, result.seconds)
    plot_curves(result.history, out_dir / "curves.png", title=f"{config.recipe.KIND} on {config.teacher}")
    write_model_card(pipeline, config, card, None, command)
    stopped = {"stopped": True, "stop_reason": result.stopped, "steps": result.step,
               "checkpoint": str(result.checkpoint)}
    (out_dir / "metrics.json").write_text(json.dumps(stopped, indent=2))


def _trained_unet(trainer: Trainer, bound: BoundRecipe) -> nn.Module | None:
    """What is exported (before any LoRA merge): the student's EMA, or the student. When fsdp sharded it, its
    full weights are gathered on every rank (a collective) and rank 0 gets an unsharded copy; others None."""
    unet = trainer.ema.shadow if trainer.ema is not None else bound.student_unet
    if not parallel.is_sharded(trainer):
        return unet
    from gendistill.train.sharded import full_state_dict

    weights = full_state_dict(unet)
    return unsharded_copy(unet, weights) if trainer.accelerator.is_main_process else None


def unsharded_copy(sharded: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A plain module of ``sharded``'s diffusers class and config (its LoRA adapters too, which the export
    merges) holding ``weights`` (the gathered full state dict) on the CPU; built without random init."""
    from accelerate import init_empty_weights
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(sharded).__mro__ if not issubclass(c, FSDPModule))  # fully_shard's subclass
    if not hasattr(cls, "from_config"):
        raise UserError(f"cannot export a sharded {cls.__name__}: it has no diffusers config to rebuild it from")
    with init_empty_weights():
        unet = cls.from_config(sharded.config)
        for name, adapter in getattr(sharded, "peft_config", {}).items():
            unet.add_adapter(copy.deepcopy(adapter), adapter_name=name)
    unet.load_state_dict({k: v.contiguous() for k, v in weights.items()}, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def _evaluates(config: DistillConfig) -> bool:
    return config.data.source == "shapes" and config.eval.during_training_samples >= 2


def _eval_fn(config: DistillConfig, teacher: TextToImageModel, bound: BoundRecipe, samples_dir: Path,
             main: bool = True):
    """Quality of the current student, plus a grid of its samples in samples_dir/step-NNNNNNN.png (written by
    the main process only: under fsdp every rank evaluates, its sharded forwards being collectives)."""
    from torch.distributed.fsdp import FSDPModule

    from gendistill.domains.shapes.evaluation import ShapesEvaluator, evaluate_model

    evaluator = ShapesEvaluator.load()

    def evaluate(step: int) -> dict[str, float]:
        bound.student_unet.eval()
        sharded = isinstance(bound.student_unet, FSDPModule)  # cannot be copied to merge LoRA; samples as is
        model = student_model(teacher, bound, bound.student_unet if sharded else bound.export_unet())
        images: list = []
        q = evaluate_model(model, evaluator, bound.default_steps, "auto", bound.guidance,
                           config.eval.during_training_samples, seed=10_000, images_out=images)
        if main:
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
