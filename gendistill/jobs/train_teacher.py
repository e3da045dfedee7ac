"""``gendistill train-teacher``: train the shapes teacher on the one trainer, export it, evaluate it, print.

The stages of :mod:`gendistill.domains.shapes.teacher_recipes` (VAE, then text encoder + UNet, then VAE
decoder) run as sequential trainer runs, one ``Trainer`` each. Layout of ``out_dir``: ``config.yaml`` (the
resolved config), ``cache/`` (renders and latents, remade if absent), ``checkpoints/<stage>/checkpoints/``
(each stage's trainer checkpoints), ``train_report.json`` (steps and seconds per stage, why a run stopped)
and ``pipeline/`` (the stock diffusers folder with its model card).

``--resume`` restores each stage from its newest readable checkpoint: a finished stage restores its last
weights without a step, redoes what follows it (the latent fold after the VAE, the EMA weights after the
UNet), and the first unfinished one continues, so a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gendistill.config import save_config
from gendistill.domains.shapes.teacher import TeacherComponents, TeacherConfig, build_components
from gendistill.domains.shapes.teacher_data import (
    LatentBatches, RenderBatches, RenderCache, encode_cache, encoder_fingerprint, load_or_make_latents,
    load_or_make_renders, render_cache,
)
from gendistill.domains.shapes.teacher_export import TrainingSummary, export_and_report
from gendistill.domains.shapes.teacher_recipes import (
    EMA_MODULE, DecoderStage, DiffusionStage, TeacherRecipe, TeacherStage, VAEStage, fold_latent_statistics,
    teacher_modules,
)
from gendistill.errors import UserError
from gendistill.jobs.threads import AdaptiveThreads
from gendistill.run_dir import prepare_out_dir
from gendistill.train.checkpoint import (CheckpointData, checkpoints_newest_first, load_module_state,
                                         read_newest_readable)
from gendistill.train.trainer import Trainer, TrainResult

STAGE_NAMES = (VAEStage.name, DiffusionStage.name, DecoderStage.name)
"""The stages in the order they run."""

StageHook = Callable[[str, int, dict], None]
"""``on_step(stage, step, row)`` after every trainer step (0-based step of the stage)."""


@dataclass(frozen=True)
class TeacherRun:
    """What :func:`train_teacher` made."""

    out_dir: Path
    pipeline_dir: Path
    stages: dict[str, TrainResult]
    """The trainer's result of each stage run by this call (stages with 0 steps are absent)."""
    scaling_factor: float
    """The VAE's latent scaling factor (1 / std after the fold)."""


@dataclass(frozen=True)
class StagePlan:
    """One stage of the run: its recipe stage, its batches, and what follows it."""

    stage: TeacherStage
    batches: Callable[[], Callable]
    """Makes the stage's ``batch_fn`` when the stage starts (the latents need the finished VAE)."""
    finish: Callable[[Trainer | None], None]
    """Runs after the stage's trainer (also when it was restored without a step; None: the stage has no steps)."""


def train_teacher(config: TeacherConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                  on_step: StageHook | None = None, log: Callable[[str], None] = print) -> TeacherRun:
    """Train (or resume) the shapes teacher into ``out_dir``, export ``out_dir/pipeline``, evaluate it.

    A stop (Ctrl-C, an exception from ``on_step``, divergence) leaves the stage's checkpoint and
    ``train_report.json`` (with ``stopped``), then re-raises; ``resume=True`` continues from there.
    """
    out_dir = prepare_out_dir(out_dir)
    check_checkpoints(out_dir / "checkpoints", resume)
    threads = set_threads(config.threads)
    save_config(config, out_dir / "config.yaml")
    components = build_components(config.model, torch.Generator().manual_seed(config.seed))
    renders = load_or_make_renders(
        out_dir / "cache" / "renders.safetensors", f"seed={config.seed} n={config.data.cache_size}",
        lambda: render_cache(config.data, config.data.cache_size, torch.Generator().manual_seed(config.seed + 1)))
    report = read_report(out_dir)
    results: dict[str, TrainResult] = {}
    for plan in _plans(config, components, renders, out_dir):
        trainer = None
        if plan.stage.steps > 0:
            trainer = _stage_trainer(plan, config, components, out_dir, report, progress, threads, on_step, log)
            results[plan.stage.name] = trainer.fit(resume=resume and resumable(trainer.checkpoint_root, log))
            record_stage(out_dir, report, plan.stage.name, results[plan.stage.name])
        plan.finish(trainer)
    summary = _summary(config, report)
    pipeline = export_and_report(components, config, out_dir / "pipeline", summary, log=log)
    return TeacherRun(out_dir, pipeline, results, float(components.vae.config.scaling_factor))


def _stage_trainer(plan: StagePlan, config: TeacherConfig, components: TeacherComponents, out_dir: Path,
                   report: dict, progress: bool, threads: AdaptiveThreads | None, on_step: StageHook | None,
                   log: Callable[[str], None]) -> Trainer:
    """The trainer of one stage: checkpoints in ``out_dir/checkpoints/<stage>/checkpoints``, a seed of its own."""
    name = plan.stage.name
    trainer_config = plan.stage.trainer_config(len(STAGE_NAMES) * config.seed + STAGE_NAMES.index(name),
                                               config.checkpoint)
    return Trainer(TeacherRecipe(components, plan.stage), trainer_config, out_dir / "checkpoints" / name,
                   plan.batches(), progress=progress, on_step=stage_hook(name, threads, on_step),
                   on_stop=lambda result: record_stage(out_dir, report, name, result), log=log,
                   description=f"teacher/{name}")


def _plans(config: TeacherConfig, components: TeacherComponents, renders: RenderCache,
           out_dir: Path) -> list[StagePlan]:
    """The stages in order, with their data and what follows each (also when a stage has no steps)."""
    def latents():
        vae = components.vae
        return load_or_make_latents(out_dir / "cache" / "latents.safetensors", encoder_fingerprint(vae),
                                    lambda: encode_cache(vae, renders.images))

    def fold(trainer: Trainer | None) -> None:
        fold_latent_statistics(components.vae, renders.images[:config.vae.stats_images])

    def adopt_ema(trainer: Trainer | None) -> None:
        """The exported (and decoder-stage) text encoder and UNet are their EMA."""
        if trainer is not None and trainer.ema is not None:
            trainer.modules[EMA_MODULE].load_state_dict(trainer.ema.shadow.state_dict())

    data, diffusion = config.data, config.diffusion
    return [
        StagePlan(VAEStage(config.vae), lambda: RenderBatches(renders, config.vae.batch_size), fold),
        StagePlan(DiffusionStage(diffusion, config.model.noise),
                  lambda: LatentBatches(renders, latents(), diffusion.batch_size, data.view_phrase_prob,
                                        diffusion.caption_dropout), adopt_ema),
        StagePlan(DecoderStage(config.decoder),
                  lambda: LatentBatches(renders, latents(), config.decoder.batch_size, data.view_phrase_prob),
                  lambda trainer: None),
    ]


def resumable(root: Path, log: Callable[[str], None]) -> bool:
    """Whether a checkpoint under ``root`` reads whole (the trainer resumes from the newest such). A stage
    with none starts again: the stage before it ended whole, so only this stage's steps are lost."""
    if not checkpoints_newest_first(root):
        return False
    try:
        read_newest_readable(root)
    except UserError as err:
        log(f"{err}; starting that stage again")
        return False
    return True


def check_checkpoints(root: Path, resume: bool) -> None:
    found = root.is_dir() and any(checkpoints_newest_first(p / "checkpoints") for p in root.iterdir() if p.is_dir())
    if not resume and found:
        raise UserError(f"{root} already holds checkpoints; pass --resume to continue them, "
                        "or choose an empty --out folder")
    if resume and not found:
        raise UserError(f"--resume: no checkpoint in {root}; run without --resume to start")


def set_threads(threads: int) -> AdaptiveThreads | None:
    """Apply ``config.threads``; for -1, the tuner that switches between 1 and 2 threads by timing both."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif threads < 0:
        torch.set_num_threads(1)
        return AdaptiveThreads()
    return None


def stage_hook(stage: str, threads: AdaptiveThreads | None, on_step: StageHook | None):
    last = [time.perf_counter()]

    def hook(step: int, row: dict, losses) -> None:
        now = time.perf_counter()
        if threads is not None:
            threads.record(now - last[0])
        last[0] = now
        if on_step is not None:
            on_step(stage, step, row)

    return hook


# ----------------------------------------------------------------------------- train_report.json


def read_report(out_dir: Path) -> dict:
    path = out_dir / "train_report.json"
    return json.loads(path.read_text()) if path.is_file() else {"stages": {}}


def record_stage(out_dir: Path, report: dict, stage: str, result: TrainResult) -> None:
    """Add this call's steps and seconds of ``stage`` to ``train_report.json`` (restores add nothing)."""
    entry = report["stages"].setdefault(stage, {"steps": 0, "seconds": 0.0})
    if result.step != entry["steps"]:
        entry["seconds"] = round(entry["seconds"] + result.seconds, 2)
        entry["steps"] = result.step
    report["stopped"] = None if result.stopped is None else {"reason": result.stopped, "stage": stage,
                                                             "step": result.step}
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")


def _summary(config: TeacherConfig, report: dict, diffusion_steps: int | None = None) -> TrainingSummary:
    stages = report["stages"]
    per_step = {name: s["seconds"] / s["steps"] for name, s in stages.items() if s["steps"]}
    done = diffusion_steps if diffusion_steps is not None else stages.get("diffusion", {}).get("steps", 0)
    return TrainingSummary(command_line(), sum(s["seconds"] for s in stages.values()), per_step, done)


def command_line() -> str:
    """The command that is running, as a user would type it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("train_teacher.py"):
        argv = ["python", "-m", "gendistill.jobs.train_teacher", *argv[1:]]
    elif argv:
        argv[0] = Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv)


# ----------------------------------------------------------------------------- export from a checkpoint


def export_from_checkpoint(config: TeacherConfig, out_dir: str | Path, dest: Path | None = None,
                           log: Callable[[str], None] = print) -> Path:
    """Export ``out_dir/pipeline`` (or ``dest``) with its model card and evaluation from the newest readable
    checkpoint of the newest stage, e.g. of a run stopped before its end (EMA weights mid-UNet stage)."""
    out_dir = Path(out_dir)
    root = out_dir / "checkpoints"
    found = _newest_stage_checkpoint(root)
    if found is None:
        raise UserError(f"no checkpoint in {root} to export")
    stage, data = found
    if stage == VAEStage.name:
        raise UserError(f"{data.path} is still in the VAE stage; nothing to export yet")
    set_threads(config.threads)
    components = build_components(config.model, torch.Generator().manual_seed(config.seed))
    modules = teacher_modules(components)
    for name, module in modules.items():
        load_module_state(module, {k[len(name) + 1:]: v for k, v in data.weights.items() if k.startswith(name + "/")})
    if data.extra is not None and "scaling_factor" in data.extra:
        components.vae.register_to_config(scaling_factor=float(data.extra["scaling_factor"][0]))
    if stage == DiffusionStage.name and data.ema is not None:
        modules[EMA_MODULE].load_state_dict(data.ema)
    steps = data.meta["step"] if stage == DiffusionStage.name else config.diffusion.steps
    summary = _summary(config, read_report(out_dir), steps)
    return export_and_report(components, config, dest or out_dir / "pipeline", summary, log=log)


def _newest_stage_checkpoint(root: Path) -> tuple[str, CheckpointData] | None:
    """(stage, checkpoint) of the newest readable checkpoint of the latest stage that has one."""
    for stage in reversed(STAGE_NAMES):
        if checkpoints_newest_first(root / stage / "checkpoints"):
            try:
                return stage, read_newest_readable(root / stage / "checkpoints")[0]
            except UserError:
                continue
    return None
