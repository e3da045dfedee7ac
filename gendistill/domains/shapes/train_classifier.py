"""Train the shapes classifier on fresh renders and ship it as a folder (weights, config, model card).

    python -m gendistill.domains.shapes.train_classifier --out assets/shapes-classifier --steps 300 --seed 0

Every step draws new renders from :func:`make_batch` (topped up from a pool of earlier renders, since
rendering costs more than the network on a CPU) and perturbs them with label-keeping augmentations
(brightness and per-channel gain, a small shift, blur, noise) so the classifier judges generated images by
shape and colour rather than by pixel-exact render artefacts. Label smoothing keeps it from being
over-confident. Training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from gendistill.errors import UserError, check_range

from .classifier import ClassifierConfig, ShapeClassifier, save_classifier
from .dataset import fixed_split, make_batch, split_generator
from .metrics import cached_reference_stats, colour_accuracy, prompt_accuracy, shape_accuracy


@dataclass(frozen=True)
class Augment:
    """Label-keeping perturbations applied to each training batch."""

    brightness: float = 0.12
    """Images are multiplied by U(1 - b, 1 + b)."""
    channel_gain: float = 0.05
    """Each RGB channel is further multiplied by U(1 - g, 1 + g)."""
    max_shift: int = 3
    """Images are translated by up to this many pixels in x and y, filling with white."""
    blur_prob: float = 0.5
    """Probability that an image is mixed with a 3x3 Gaussian blur of itself (random weight)."""
    max_noise: float = 0.05
    """Gaussian pixel noise with std U(0, max_noise)."""


def augment(images: Tensor, generator: torch.Generator, cfg: Augment = Augment()) -> Tensor:
    """Apply :class:`Augment` perturbations to (N, 3, H, W) images in [0, 1]; returns images in [0, 1]."""
    n = images.shape[0]

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator)

    x = _translate(images, torch.randint(-cfg.max_shift, cfg.max_shift + 1, (n, 2), generator=generator))
    brightness = 1 + cfg.brightness * (2 * uniform(n, 1, 1, 1) - 1)
    x = x * brightness * (1 + cfg.channel_gain * (2 * uniform(n, 3, 1, 1) - 1))
    blur_weight = uniform(n, 1, 1, 1) * (uniform(n, 1, 1, 1) < cfg.blur_prob)
    x = torch.lerp(x, _blur3(x), blur_weight)
    noise_std = cfg.max_noise * uniform(n, 1, 1, 1)
    return (x + noise_std * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def _translate(images: Tensor, shifts: Tensor) -> Tensor:
    """Shift each image by integer (dy, dx), filling the uncovered border with white."""
    pad = int(shifts.abs().max()) if shifts.numel() else 0
    if pad == 0:
        return images
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad,) * 4, value=1.0)
    return torch.stack([padded[i, :, pad - dy: pad - dy + h, pad - dx: pad - dx + w]
                        for i, (dy, dx) in enumerate(shifts.tolist())])


def _blur3(images: Tensor) -> Tensor:
    kernel_1d = torch.tensor([0.25, 0.5, 0.25], dtype=images.dtype)
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(images.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])


class RenderPool:
    """A ring buffer of labelled renders (stored as float16) that training batches are topped up from."""

    def __init__(self, capacity: int, image_shape: tuple[int, ...] = (3, 64, 64)):
        self.images = torch.empty(capacity, *image_shape, dtype=torch.float16)
        self.labels = torch.empty(capacity, 2, dtype=torch.long)
        self.capacity, self.size, self.added, self._next = capacity, 0, 0, 0

    def add(self, images: Tensor, labels: Tensor) -> None:
        """Store (n, 3, H, W) images with (n, 2) [shape_id, colour_id] labels, overwriting the oldest."""
        self.added += len(images)
        for image, label in zip(images[-self.capacity:], labels[-self.capacity:]):
            self.images[self._next], self.labels[self._next] = image, label
            self._next = (self._next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` stored renders drawn uniformly with replacement: float32 images and (n, 2) labels."""
        if n == 0:
            return self.images[:0].float(), self.labels[:0]
        idx = torch.randint(0, self.size, (n,), generator=generator)
        return self.images[idx].float(), self.labels[idx]


@dataclass
class TrainReport:
    """How a classifier training run went."""

    steps: int
    batch_size: int
    fresh_per_step: int
    seed: int
    lr: float
    renders: int
    """Distinct renders drawn from make_batch over the run."""
    wall_clock_s: float
    threads: int
    load_average: float
    """1-minute load average of the machine when training ended."""
    final_loss: float
    """Mean training loss over the last 10% of steps."""
    final_train_accuracy: float
    """Prompt accuracy on the (augmented) training batches of the last 10% of steps."""
    losses: list[float] = field(default_factory=list, repr=False)


def train_classifier(steps: int = 300, batch_size: int = 64, seed: int = 0, lr: float = 3e-3,
                     fresh_per_step: int = 16, pool_size: int = 4096, config: ClassifierConfig | None = None,
                     aug: Augment = Augment(), label_smoothing: float = 0.1, weight_decay: float = 1e-4,
                     progress: bool = True) -> tuple[ShapeClassifier, TrainReport]:
    """Train a :class:`ShapeClassifier` from scratch on augmented renders; deterministic per seed.

    Every step renders ``fresh_per_step`` new samples with :func:`make_batch` (the train split's stream for
    ``seed``) and fills the rest of the batch from a pool of up to ``pool_size`` earlier renders: rendering,
    not the network, dominates the cost on a CPU. ``fresh_per_step = batch_size`` trains on fresh renders only.
    """
    check_range("steps", steps, 1)
    check_range("batch_size", batch_size, 2)
    check_range("fresh_per_step", fresh_per_step, 1, batch_size)
    check_range("pool_size", pool_size, batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ShapeClassifier(config)
    data_gen = split_generator("train", seed)  # never a held-out stream
    sample_gen = torch.Generator().manual_seed(seed + 7919)
    pool = RenderPool(pool_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, min(100, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _lr_factor(i, warmup, steps))
    losses, correct = [], []
    start = time.perf_counter()
    model.train()
    bar = tqdm(range(steps), desc="classifier", disable=not progress, dynamic_ncols=True)
    for step in bar:
        images, labels = _next_batch(pool, batch_size if step == 0 else fresh_per_step, batch_size,
                                     data_gen, sample_gen)
        out = model(augment(images, sample_gen, aug))
        loss = (F.cross_entropy(out.shape_logits, labels[:, 0], label_smoothing=label_smoothing)
                + F.cross_entropy(out.colour_logits, labels[:, 1], label_smoothing=label_smoothing))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        correct.append(((out.shape_logits.argmax(-1) == labels[:, 0])
                        & (out.colour_logits.argmax(-1) == labels[:, 1])).float().mean().item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{correct[-1]:.2f}")
    model.eval()
    tail = max(1, steps // 10)
    report = TrainReport(steps, batch_size, fresh_per_step, seed, lr, pool.added, time.perf_counter() - start,
                         torch.get_num_threads(), _load_average(), sum(losses[-tail:]) / tail,
                         sum(correct[-tail:]) / tail, losses)
    return model, report


def _next_batch(pool: RenderPool, n_fresh: int, batch_size: int, data_gen: torch.Generator,
                sample_gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n_fresh`` new renders plus ``batch_size - n_fresh`` from the pool; the new ones then join the pool."""
    fresh = make_batch(n_fresh, data_gen)
    images, labels = fresh.images, torch.stack([fresh.shape_ids, fresh.colour_ids], dim=1)
    pool_images, pool_labels = pool.sample(batch_size - n_fresh, sample_gen)
    pool.add(images, labels)
    return torch.cat([images, pool_images]), torch.cat([labels, pool_labels])


def _load_average() -> float:
    """The 1-minute load average (how busy the machine was: timings on a shared CPU vary with it)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 5% of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class HeldoutReport:
    """Accuracy of a classifier on the fixed held-out split of real renders."""

    prompt_accuracy: float
    shape_accuracy: float
    colour_accuracy: float
    num_images: int


def heldout_accuracy(model: ShapeClassifier, n: int = 1000) -> HeldoutReport:
    """Accuracy on the first ``n`` renders of the fixed held-out split."""
    batch = fixed_split(n, split="heldout")
    out = model.classify(batch.images)
    return HeldoutReport(prompt_accuracy(out, batch.scenes), shape_accuracy(out, batch.scenes),
                         colour_accuracy(out, batch.scenes), n)


# ----------------------------------------------------------------------------- command line

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
| renders | {report.renders} ({report.fresh_per_step} new per step, the rest of each batch reused from a pool) |
| learning rate | {report.lr:g} (AdamW, warmup + cosine), label smoothing 0.1 |
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gendistill.domains.shapes.train_classifier",
                                     description="Train the shapes-domain classifier and write it to a folder.")
    parser.add_argument("--out", default="assets/shapes-classifier", help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--fresh-per-step", type=int, default=16,
                        help="new renders per step; the rest of the batch comes from the pool of earlier ones")
    parser.add_argument("--pool-size", type=int, default=4096, help="earlier renders kept for reuse")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, data and augmentation")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out renders to measure accuracy on")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is fastest on a busy shared CPU")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    argv_used = sys.argv[1:] if argv is None else argv
    command = "python -m gendistill.domains.shapes.train_classifier " + shlex.join(argv_used)
    try:
        check_range("--heldout", args.heldout, 1)
        model, report = train_classifier(args.steps, args.batch_size, args.seed, args.lr,
                                         fresh_per_step=args.fresh_per_step, pool_size=args.pool_size,
                                         progress=not args.no_progress)
        heldout = heldout_accuracy(model, args.heldout)
        out = save_classifier(model, args.out)
        reference = cached_reference_stats(model, out)
        write_model_card(out, command, report, heldout, model.config,
                         f"reference-n{reference.n_per_scene}-seed{reference.seed}.safetensors")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"held-out prompt accuracy {heldout.prompt_accuracy:.4f} (shape {heldout.shape_accuracy:.4f}, "
          f"colour {heldout.colour_accuracy:.4f}) on {heldout.num_images} renders; "
          f"trained {report.steps} steps in {report.wall_clock_s:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
