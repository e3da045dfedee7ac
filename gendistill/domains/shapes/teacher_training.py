"""Train the shapes teacher: the autoencoder first, then the text encoder and UNet jointly.

``train_teacher(config, out_dir, resume)`` is what ``gendistill train-teacher`` runs; this module is also a
script: ``python -m gendistill.domains.shapes.teacher_training --config FILE --out DIR [--set k=v] [--resume]``.

Layout of ``out_dir``: ``config.yaml`` (resolved config), ``cache/`` (renders and latents, remade if absent),
``checkpoints/`` (atomic, resumable), ``pipeline/`` (the exported diffusers folder with its model card).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gendistill.config import save_config
from gendistill.domains.shapes.teacher import TeacherConfig, build_components, build_training_scheduler
from gendistill.domains.shapes.teacher_checkpoint import (
    TrainState, find_latest, load_checkpoint, load_or_make_latents, load_or_make_renders, save_checkpoint,
    encoder_fingerprint,
)
from gendistill.domains.shapes.teacher_data import encode_cache, render_cache
from gendistill.domains.shapes.teacher_steps import (
    PromptIds, center_and_scale_latents, decoder_parameters, decoder_step, diffusion_optimizer, diffusion_step,
    vae_optimizer, vae_step,
)
from gendistill.errors import UserError


@dataclass
class TrainResult:
    """What a call of :func:`train_teacher` produced."""

    out_dir: Path
    pipeline_dir: Path | None
    """The exported diffusers folder (None when the call stopped early)."""
    state: TrainState
    """Where training stands (phase ``done`` once finished)."""
    seconds_per_step: dict[str, float]
    """Mean wall-clock seconds per optimizer step of each phase run in this call."""


def train_teacher(config: TeacherConfig, out_dir: str | Path, resume: bool = False,
                  max_steps_this_run: int | None = None) -> TrainResult:
    """Train (or resume) the shapes teacher into ``out_dir`` and export ``out_dir/pipeline``.

    ``max_steps_this_run`` stops after that many optimizer steps (either phase) as if interrupted,
    leaving a checkpoint that ``resume=True`` continues from.
    """
    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    if not resume and find_latest(checkpoints) is not None:
        raise UserError(f"{checkpoints} already holds a checkpoint; pass --resume to continue it, "
                        "or choose an empty --out folder")
    if resume and find_latest(checkpoints) is None:
        raise UserError(f"--resume: no checkpoint in {checkpoints}; run without --resume to start")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    elif config.threads < 0:
        torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    components = build_components(config.model, torch.Generator().manual_seed(config.seed))
    state = TrainState.fresh(config.seed)
    if resume:
        state = load_checkpoint(find_latest(checkpoints), components, state)
    renders = load_or_make_renders(
        out_dir / "cache" / "renders.safetensors", f"seed={config.seed} n={config.data.cache_size}",
        lambda: render_cache(config.data, config.data.cache_size, torch.Generator().manual_seed(config.seed + 1)))
    runner = _Runner(config, out_dir, components, renders, state, max_steps_this_run)
    finished = runner.run()
    pipeline_dir = None
    if finished:
        from gendistill.domains.shapes.teacher_export import export_and_report

        pipeline_dir = export_and_report(components, state, config, out_dir, runner.seconds_per_step)
    return TrainResult(out_dir, pipeline_dir, state, runner.seconds_per_step)


class _Runner:
    """Drives the two phases with progress bars and periodic checkpoints."""

    def __init__(self, config, out_dir, components, renders, state, budget):
        self.config, self.out_dir, self.components, self.renders, self.state = config, out_dir, components, renders, state
        self.budget = budget
        self.done_this_run = 0
        self.seconds_per_step: dict[str, float] = {}
        self.last_save = time.monotonic()
        self.steps_since_save = 0
        self.threads = AdaptiveThreads()

    def run(self) -> bool:
        """Run the remaining phases; False if stopped early by the step budget."""
        if self.state.phase == "vae":
            optimizer = vae_optimizer(self.components, self.config)
            self._load_optimizer(optimizer)
            if not self._loop("vae", self.config.vae.steps, optimizer, self._vae_update):
                return False
            mean, scale = center_and_scale_latents(self.components, self.renders, self.config.vae.stats_images)
            self.state.latent_mean_removed = mean.tolist()
            self.state.scaling_factor = scale
            self.state.phase, self.state.step = "diffusion", 0
            self.state.optimizer_state = None
            self._save(None)
        if self.state.phase == "diffusion":
            self._load_latents()
            self.scheduler = build_training_scheduler(self.config.model.noise)
            self.prompt_ids = PromptIds(self.components.tokenizer)
            optimizer = diffusion_optimizer(self.components, self.config)
            self._load_optimizer(optimizer)
            if not self._loop("diffusion", self.config.diffusion.steps, optimizer, self._diffusion_update):
                return False
            self.state.phase, self.state.step = "decoder", 0
            self.state.optimizer_state = None
            self._save(None)
        if self.state.phase == "decoder":
            self._load_latents()
            optimizer = torch.optim.AdamW(decoder_parameters(self.components), lr=self.config.decoder.lr,
                                          weight_decay=0.0)
            self._load_optimizer(optimizer)
            if not self._loop("decoder", self.config.decoder.steps, optimizer, self._decoder_update):
                return False
            self.state.phase = "done"
            self._save(None)
        return True

    def _load_latents(self) -> None:
        vae = self.components.vae
        self.latents = load_or_make_latents(
            self.out_dir / "cache" / "latents.safetensors", encoder_fingerprint(vae),
            lambda: encode_cache(vae, self.renders.images))

    def _decoder_update(self, optimizer):
        return decoder_step(self.components, self.latents, self.renders, self.state, optimizer, self.config)

    def _vae_update(self, optimizer):
        return vae_step(self.components, self.renders, self.state, optimizer, self.config)

    def _diffusion_update(self, optimizer):
        return diffusion_step(self.components, self.latents, self.renders, self.prompt_ids, self.state,
                              optimizer, self.config, self.scheduler)

    def _load_optimizer(self, optimizer):
        if self.state.optimizer_state is not None:
            optimizer.load_state_dict(self.state.optimizer_state)
            self.state.optimizer_state = None

    def _loop(self, phase: str, total: int, optimizer, update) -> bool:
        ckpt = self.config.checkpoint
        bar = tqdm(total=total, initial=self.state.step, desc=f"teacher/{phase}", mininterval=5.0,
                   dynamic_ncols=True, file=sys.stderr)
        start, steps = time.monotonic(), 0
        while self.state.step < total:
            if self.budget is not None and self.done_this_run >= self.budget:
                self._save(optimizer)
                bar.close()
                return False
            tick = time.monotonic()
            logs = update(optimizer)
            self.state.step += 1
            self.state.elapsed += time.monotonic() - tick
            if self.config.threads < 0:
                self.threads.record(time.monotonic() - tick)
            self.done_this_run += 1
            self.steps_since_save += 1
            steps += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            if not math.isfinite(logs["loss"]):
                raise RuntimeError(f"{phase} loss is not finite at step {self.state.step}; lower the lr")
            due_steps = ckpt.every_steps > 0 and self.steps_since_save >= ckpt.every_steps
            due_time = ckpt.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * ckpt.every_minutes
            if (due_steps or due_time) and self.state.step < total:
                self._save(optimizer)
        bar.close()
        if steps:
            self.seconds_per_step[phase] = (time.monotonic() - start) / steps
        return True

    def _save(self, optimizer) -> None:
        save_checkpoint(self.out_dir / "checkpoints", self.components, self.state, optimizer,
                        keep=self.config.checkpoint.keep)
        self.last_save = time.monotonic()
        self.steps_since_save = 0


class AdaptiveThreads:
    """threads: -1 picks 1 or 2 torch threads by timing both now and then (two threads busy-wait badly
    when other processes share the two cores, one thread is half as fast when they do not)."""

    def __init__(self, period: int = 200, probe: int = 6):
        self.period, self.probe = period, probe
        self.count = 0
        self.times: dict[int, list[float]] = {1: [], 2: []}

    def record(self, seconds: float) -> None:
        n = torch.get_num_threads()
        phase = self.count % self.period
        self.count += 1
        if phase < 2 * self.probe:
            self.times.setdefault(n, []).append(seconds)
            if phase == self.probe - 1:
                torch.set_num_threads(2 if n == 1 else 1)
            elif phase == 2 * self.probe - 1:
                best = min(self.times, key=lambda k: sorted(self.times[k])[len(self.times[k]) // 2]
                           if self.times[k] else float("inf"))
                torch.set_num_threads(best)
                self.times = {1: [], 2: []}


def main(argv: list[str] | None = None) -> int:
    """``python -m gendistill.domains.shapes.teacher_training --config FILE --out DIR [--set k=v] [--resume]``."""
    import argparse

    from gendistill.config import load_config

    parser = argparse.ArgumentParser(description="Train the shapes teacher (a tiny Stable Diffusion).")
    parser.add_argument("--config", help="YAML config (configs/shapes-teacher.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, pipeline/)")
    parser.add_argument("--resume", action="store_true", help="continue from out/checkpoints")
    parser.add_argument("--export-only", action="store_true",
                        help="export out/pipeline from the latest checkpoint without training")
    args = parser.parse_args(argv)
    try:
        config = load_config(TeacherConfig, args.config, args.set)
        if args.export_only:
            from gendistill.domains.shapes.teacher_export import export_from_checkpoint

            pipeline_dir = export_from_checkpoint(config, args.out)
        else:
            pipeline_dir = train_teacher(config, args.out, resume=args.resume).pipeline_dir
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"teacher exported to {pipeline_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
