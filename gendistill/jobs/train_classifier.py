"""Train the shapes classifier on the one trainer and ship it as a folder (weights, config, reference
statistics, model card):

    python -m gendistill.jobs.train_classifier --out assets/shapes-classifier --steps 300 --seed 0

The trainer's checkpoints go to ``OUT/checkpoints`` while it runs and are removed once the classifier is
written; a stopped run keeps them, and ``--resume`` continues from the newest readable one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gendistill.config import check_config
from gendistill.domains.shapes.classifier import ClassifierConfig, ShapeClassifier, save_classifier
from gendistill.domains.shapes.classifier_training import (
    PHASE, ClassifierRecipe, ClassifierTrainingConfig, HeldoutReport, RenderWindow, heldout_accuracy,
    initial_classifier,
)
from gendistill.domains.shapes.metrics import cached_reference_stats
from gendistill.errors import RunStopped, UserError, check_range
from gendistill.train.trainer import Trainer


@dataclass
class TrainReport:
    """How a classifier training run went."""

    steps: int
    batch_size: int
    fresh_per_step: int
    seed: int
    lr: float
    renders: int
    """Distinct renders the batches drew over the run."""
    wall_clock_s: float
    """Seconds of training in this call (a resumed run counts only its own part)."""
    threads: int
    load_average: float
    """1-minute load average of the machine when training ended."""
    final_loss: float
    """Mean training loss over the last 10% of steps."""
    final_train_accuracy: float
    """Prompt accuracy on the (augmented) training batches of the last 10% of steps."""
    losses: list[float] = field(default_factory=list, repr=False)


def train_classifier(config: ClassifierTrainingConfig, run_dir: str | Path, resume: bool = False,
                     progress: bool = True, log: Callable[[str], None] = print,
                     on_step=None) -> tuple[ShapeClassifier, TrainReport]:
    """Train a :class:`ShapeClassifier` from scratch on augmented renders, checkpointing into
    ``run_dir/checkpoints``; deterministic per seed (and thread count), and a resumed run ends with the
    weights of an uninterrupted one. Returns the classifier in eval mode and the report."""
    check_config(config)
    model = initial_classifier(config.seed)
    trainer = Trainer(ClassifierRecipe(model, config.label_smoothing), config.trainer_config(), run_dir,
                      RenderWindow(config), progress=progress, on_step=on_step, log=log, description="classifier")
    result = trainer.fit(resume=resume)
    model.eval()
    losses = [row[f"{PHASE}/loss"] for row in result.history if f"{PHASE}/loss" in row]
    accuracy = [row[f"{PHASE}/accuracy"] for row in result.history if f"{PHASE}/accuracy" in row]
    tail = max(1, config.steps // 10)
    renders = config.batch_size + (config.steps - 1) * config.fresh_per_step
    report = TrainReport(config.steps, config.batch_size, config.fresh_per_step, config.seed, config.lr, renders,
                         result.seconds, torch.get_num_threads(), _load_average(), sum(losses[-tail:]) / tail,
                         sum(accuracy[-tail:]) / tail, losses)
    return model, report


def _load_average() -> float:
    """The 1-minute load average (how busy the machine was: timings on a shared CPU vary with it)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def write_model_card(directory: Path, command: str, report: TrainReport, heldout: HeldoutReport,
                     config: ClassifierConfig, reference_file: str) -> None:
    """Write README.md (human) and train_report.json (machine) next to the weights."""
    n_params = sum(p.numel() for p in ShapeClassifier(config).parameters())
    summary = {"command": command, "train": {k: v for k, v in asdict(report).items() if k != "losses"},
               "heldout": asdict(heldout)}
    (directory / "train_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / "README.md").write_text(f"""# shapes classifier

The evaluator of gendistill's embedded shapes domain: a {len(config.widths)}-stage CNN ({n_params:,} parameters,
{config.input_size}x{config.input_size} input after area-downsampling the 64x64 render) with a shape head
({', '.join(config.shapes)}) and a colour head ({', '.join(config.colours)}).
Its {config.feature_dim}-d penultimate features (global average of the last conv block) are what FID and
diversity in `gendistill.domains.shapes.metrics` are measured on.

Made by:

    {command}

| | |
|---|---|
| seed | {report.seed} |
| steps x batch | {report.steps} x {report.batch_size} augmented images |
| renders | {report.renders} ({report.fresh_per_step} new per step, the rest of each batch reused from earlier steps) |
| learning rate | {report.lr:g} (AdamW, linear warm-up + exponential decay to 5%), label smoothing 0.1 |
| wall-clock | {report.wall_clock_s:.0f} s, {report.threads} torch CPU thread(s), \
machine load average {report.load_average:.1f} (torch {torch.__version__}) |
| final train loss | {report.final_loss:.4f} |
| held-out prompt accuracy (shape and colour) | {heldout.prompt_accuracy:.4f} on {heldout.num_images} renders |
| held-out shape accuracy | {heldout.shape_accuracy:.4f} |
| held-out colour accuracy | {heldout.colour_accuracy:.4f} |

Files: `model.safetensors` (weights), `config.json` (architecture and label order), `train_report.json`,
and `{reference_file}`: the reference statistics (features of 16 held-out renders of each of the 40 scenes)
that `metrics.cached_reference_stats(classifier, this_folder)` returns without rendering.

Load it with `gendistill.domains.shapes.classifier.load_classifier("{directory.as_posix()}")`.
""")


def _parser() -> argparse.ArgumentParser:
    defaults = ClassifierTrainingConfig()
    parser = argparse.ArgumentParser(prog="python -m gendistill.jobs.train_classifier",
                                     description="Train the shapes-domain classifier and write it to a folder.")
    parser.add_argument("--out", default="assets/shapes-classifier", help="output folder")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    parser.add_argument("--fresh-per-step", type=int, default=defaults.fresh_per_step,
                        help="new renders per step; the rest of the batch comes from those of earlier steps")
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size, help="earlier renders kept for reuse")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed for initialisation, data and augmentation")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out renders to measure accuracy on")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is fastest on a busy shared CPU")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train, measure on the held-out split, write the folder, print one line; exit 2 on a user error."""
    args = _parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python -m gendistill.jobs.train_classifier " + shlex.join(argv_used)
    config = ClassifierTrainingConfig(steps=args.steps, batch_size=args.batch_size, fresh_per_step=args.fresh_per_step,
                                      pool_size=args.pool_size, seed=args.seed, lr=args.lr)
    out = Path(args.out)
    try:
        check_range("--heldout", args.heldout, 1)
        model, report = train_classifier(config, out, resume=args.resume, progress=not args.no_progress)
        heldout = heldout_accuracy(model, args.heldout)
        save_classifier(model, out)
        reference = cached_reference_stats(model, out)
        write_model_card(out, command, report, heldout, model.config,
                         f"reference-n{reference.n_per_scene}-seed{reference.seed}.safetensors")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:
        print(f"stopped: {err}; --resume continues from {out / 'checkpoints'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; --resume continues from {out / 'checkpoints'}", file=sys.stderr)
        return 130
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    print(f"held-out prompt accuracy {heldout.prompt_accuracy:.4f} (shape {heldout.shape_accuracy:.4f}, "
          f"colour {heldout.colour_accuracy:.4f}) on {heldout.num_images} renders; "
          f"trained {report.steps} steps in {report.wall_clock_s:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
