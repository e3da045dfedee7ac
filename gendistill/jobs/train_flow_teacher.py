"""``gendistill train-teacher --config shapes-flow-teacher``: train the SD3-shaped flow teacher on the one trainer.

One stage (``diffusion``: the transformer; the VAE and text encoder come trained and frozen from ``base``).
Layout of ``out_dir`` as the VP teacher's job (:mod:`gendistill.jobs.train_teacher`): ``config.yaml``,
``cache/`` (renders and their latents under the base VAE), ``checkpoints/diffusion/checkpoints/``,
``train_report.json`` and ``pipeline/`` (a stock ``StableDiffusion3Pipeline`` folder with its model card).
``--resume`` continues from the newest readable checkpoint; the exported transformer is the EMA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from gendistill.config import save_config
from gendistill.domains.shapes.flow_teacher import FlowTeacherComponents, FlowTeacherConfig, build_flow_components
from gendistill.domains.shapes.flow_teacher_export import export_flow_and_report
from gendistill.domains.shapes.flow_teacher_recipe import FLOW_MODULE, PHASE, FlowTeacherRecipe
from gendistill.domains.shapes.teacher_data import (LatentBatches, encode_cache, encoder_fingerprint,
                                                    load_or_make_latents, load_or_make_renders, render_cache)
from gendistill.domains.shapes.teacher_export import TrainingSummary
from gendistill.errors import UserError
from gendistill.jobs.train_teacher import (StageHook, TeacherRun, check_checkpoints, command_line, read_report,
                                           record_stage, resumable, set_threads, stage_hook)
from gendistill.run_dir import prepare_out_dir
from gendistill.train.checkpoint import load_module_state, read_newest_readable
from gendistill.train.trainer import Trainer


def train_flow_teacher(config: FlowTeacherConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                       on_step: StageHook | None = None, log: Callable[[str], None] = print) -> TeacherRun:
    """Train (or resume) the flow teacher into ``out_dir``, export ``out_dir/pipeline``, evaluate it.

    A stop (Ctrl-C, an exception from ``on_step``, divergence) leaves the checkpoint and ``train_report.json``
    (with ``stopped``), then re-raises; ``resume=True`` continues from there.
    """
    out_dir = prepare_out_dir(out_dir)
    check_checkpoints(out_dir / "checkpoints", resume)
    threads = set_threads(config.threads)
    save_config(config, out_dir / "config.yaml")
    components = build_flow_components(config, torch.Generator().manual_seed(config.seed))
    recipe = FlowTeacherRecipe(components, config.diffusion, config.noise)
    report = read_report(out_dir)
    root = out_dir / "checkpoints" / PHASE
    trainer = Trainer(recipe, recipe.trainer_config(config.seed, config.checkpoint), root,
                      _latent_batches(config, components, out_dir), progress=progress,
                      on_step=stage_hook(PHASE, threads, on_step),
                      on_stop=lambda result: record_stage(out_dir, report, PHASE, result), log=log,
                      description="flow-teacher/diffusion")
    result = trainer.fit(resume=resume and resumable(trainer.checkpoint_root, log))
    record_stage(out_dir, report, PHASE, result)
    if trainer.ema is not None:
        components.transformer.load_state_dict(trainer.ema.shadow.state_dict())
    pipeline = export_flow_and_report(components, config, out_dir / "pipeline", _summary(report), log=log)
    return TeacherRun(out_dir, pipeline, {PHASE: result}, float(components.vae.config.scaling_factor))


def _latent_batches(config: FlowTeacherConfig, components: FlowTeacherComponents, out_dir: Path) -> LatentBatches:
    """Cached renders (seeded as the VP teacher's) and their latents under the frozen base VAE."""
    renders = load_or_make_renders(
        out_dir / "cache" / "renders.safetensors", f"seed={config.seed} n={config.data.cache_size}",
        lambda: render_cache(config.data, config.data.cache_size, torch.Generator().manual_seed(config.seed + 1)))
    vae = components.vae
    latents = load_or_make_latents(out_dir / "cache" / "latents.safetensors", encoder_fingerprint(vae),
                                   lambda: encode_cache(vae, renders.images))
    return LatentBatches(renders, latents, config.diffusion.batch_size, config.data.view_phrase_prob,
                         config.diffusion.caption_dropout)


def _summary(report: dict, steps: int | None = None) -> TrainingSummary:
    stage = report["stages"].get(PHASE, {"steps": 0, "seconds": 0.0})
    per_step = {PHASE: stage["seconds"] / stage["steps"]} if stage["steps"] else {}
    return TrainingSummary(command_line(), stage["seconds"], per_step, steps if steps is not None else stage["steps"])


def export_flow_from_checkpoint(config: FlowTeacherConfig, out_dir: str | Path, dest: Path | None = None,
                                log: Callable[[str], None] = print) -> Path:
    """Export ``out_dir/pipeline`` (or ``dest``) from the newest readable checkpoint (its EMA transformer)."""
    out_dir = Path(out_dir)
    root = out_dir / "checkpoints" / PHASE / "checkpoints"
    try:
        data = read_newest_readable(root)[0]
    except UserError:
        raise UserError(f"no readable checkpoint in {root} to export") from None
    set_threads(config.threads)
    components = build_flow_components(config, torch.Generator().manual_seed(config.seed))
    prefix = FLOW_MODULE + "/"
    load_module_state(components.transformer, {k[len(prefix):]: v for k, v in data.weights.items()
                                                if k.startswith(prefix)})
    if data.ema is not None:
        components.transformer.load_state_dict(data.ema)
    summary = _summary(read_report(out_dir), data.meta["step"])
    return export_flow_and_report(components, config, dest or out_dir / "pipeline", summary, log=log)
