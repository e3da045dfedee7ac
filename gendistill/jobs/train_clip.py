"""``gendistill train-clip``: a small CLIP for the shapes world, trained on the one trainer, exported in
open_clip's folder layout with a model card.

Layout of ``out_dir``: ``config.yaml``, ``cache/renders.safetensors`` (the renders, remade if absent),
``checkpoints/`` (the trainer's; ``--resume`` continues exactly) and ``clip/`` (what
``open_clip.create_model("local-dir:OUT/clip")`` loads, its tokenizer and README.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gendistill.backends.open_clip_model import save_clip
from gendistill.config import save_config, to_dict
from gendistill.domains.shapes.clip_training import (CLIP_PHASE, ClipBatches, ClipRecipe, ClipTrainingConfig,
                                                     ZeroShotResult, build_shapes_clip, zero_shot_accuracy)
from gendistill.domains.shapes.teacher import DataConfig
from gendistill.domains.shapes.teacher_data import load_or_make_renders, render_cache
from gendistill.errors import UserError
from gendistill.jobs.train_teacher import command_line as _argv_line
from gendistill.run_dir import prepare_out_dir
from gendistill.train.checkpoint import checkpoints_newest_first
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer


def command_line() -> str:
    """The running command as a user types it (``python -m gendistill ...`` is ``gendistill ...``)."""
    line = _argv_line()
    return "gendistill" + line[len("__main__.py"):] if line.startswith("__main__.py") else line


@dataclass(frozen=True)
class ClipRun:
    """What :func:`train_clip` made."""

    out_dir: Path
    clip_dir: Path
    zero_shot: ZeroShotResult
    seconds: float
    steps: int


def clip_trainer_config(config: ClipTrainingConfig) -> TrainerConfig:
    return TrainerConfig(steps=config.steps, seed=config.seed, grad_clip=1.0, log_every=10,
                         checkpoint_every=config.checkpoint_every, keep_checkpoints=2,
                         optimizers={CLIP_PHASE: OptimizerConfig(kind="adamw", lr=config.lr,
                                                                 warmup_steps=config.warmup_steps,
                                                                 weight_decay=config.weight_decay)})


def renders_for(config: ClipTrainingConfig, out_dir: Path):
    """The training renders (cached in ``out_dir/cache``; their own seed, apart from the held-out split)."""
    data = DataConfig(cache_size=config.cache_size, render_batch=250)
    return load_or_make_renders(out_dir / "cache" / "renders.safetensors",
                                f"clip seed={config.seed} n={config.cache_size}",
                                lambda: render_cache(data, config.cache_size,
                                                     torch.Generator().manual_seed(10_000 + config.seed)))


def train_clip(config: ClipTrainingConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
               log: Callable[[str], None] = print) -> ClipRun:
    """Train (or resume) the CLIP into ``out_dir`` and export ``out_dir/clip`` with its model card."""
    out_dir = prepare_out_dir(out_dir)
    found = bool(checkpoints_newest_first(out_dir / "checkpoints"))
    if resume != found:
        raise UserError(f"--resume: no checkpoint in {out_dir / 'checkpoints'}" if resume else
                        f"{out_dir / 'checkpoints'} already holds checkpoints; pass --resume or choose an empty --out")
    save_config(config, out_dir / "config.yaml")
    model, tokenizer, model_cfg = build_shapes_clip(config.model, torch.Generator().manual_seed(config.seed))
    renders = renders_for(config, out_dir)
    recipe = ClipRecipe(model, tokenizer)
    trainer = Trainer(recipe, clip_trainer_config(config), out_dir, ClipBatches(renders, config.batch_size,
                                                                                config.view_phrase_prob),
                      progress=progress, log=log, description="train-clip")
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    zero_shot = zero_shot_accuracy(model, tokenizer, config.eval_renders, seed=config.seed)
    clip_dir = save_clip(model, model_cfg, tokenizer, out_dir / "clip")
    final = [row for row in result.history if f"{CLIP_PHASE}/loss" in row][-1]
    write_model_card(clip_dir, config, zero_shot, seconds, result.step, final)
    log(f"zero-shot on {zero_shot.renders} held-out renders: shape {zero_shot.shape_accuracy:.3f}, "
        f"colour {zero_shot.colour_accuracy:.3f}, both {zero_shot.both_accuracy:.3f}")
    return ClipRun(out_dir, clip_dir, zero_shot, seconds, result.step)


def write_model_card(folder: Path, config: ClipTrainingConfig, zero_shot: ZeroShotResult, seconds: float,
                     steps: int, final_row: dict) -> None:
    """README.md and gendistill.json (the measured numbers, machine-readable)."""
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    card = {"kind": "open_clip", "steps": steps, "seconds_this_call": round(seconds, 1),
            "zero_shot": asdict(zero_shot), "final_loss": round(final_row[f"{CLIP_PHASE}/loss"], 4),
            "command": command_line(), "config": to_dict(config)}
    (folder / "gendistill.json").write_text(json.dumps(card, indent=2) + "\n")
    z = zero_shot
    (folder / "README.md").write_text(f"""# shapes-clip

A miniature CLIP (open_clip's `CLIP`: a {config.model.image_layers}-block ViT of width {config.model.image_width}
on 64x64 renders in {config.model.patch_size}px patches, a {config.model.text_layers}-block text transformer of width
{config.model.text_width} over the shapes tokenizer's vocabulary, a {config.model.embed_dim}-d joint embedding), built
from a config dict and trained from random weights by gendistill on shapes-world renders and their captions
(`gendistill.domains.shapes.clip_training`: CLIP's contrastive loss, targets uniform over same-caption pairs).

Load it with open_clip: `open_clip.create_model("local-dir:<this folder>")`; the tokenizer is
`transformers.CLIPTokenizer.from_pretrained("<this folder>/tokenizer")` (pad to 16 tokens with the end token), or
`gendistill.backends.open_clip_model.ClipImageEncoder.load(folder)`. Weights are float16 ({size / 1e6:.2f} MB in all).

## Training

- command: `{command_line()}`
- data: {config.cache_size} renders (random object of 5 shapes x 8 colours, random camera on the rig's sphere,
  azimuth 0-360, elevation -10-60 deg), captions "a <colour> <shape>" (view phrase with probability
  {config.view_phrase_prob}); seed {config.seed}
- {steps} AdamW steps of {config.batch_size} pairs, lr {config.lr:g} (warm-up {config.warmup_steps}, decay to 10%),
  weight decay {config.weight_decay:g}; final batch loss {final_row[f'{CLIP_PHASE}/loss']:.3f}
- wall-clock of this call: {seconds / 60:.1f} min on one CPU thread (2 cores shared with other jobs)

## Zero-shot accuracy

{z.renders} renders of the held-out split (their own seeds, none seen in training), each classified as the
nearest of the 40 captions "a <colour> <shape>":

| shape | colour | both |
|---|---|---|
| {z.shape_accuracy:.3f} | {z.colour_accuracy:.3f} | {z.both_accuracy:.3f} |
""")
