"""Training of the shapes classifier as a recipe of the one trainer: fresh renders, augmentations, and the
accuracy of a trained classifier on the held-out split. ``gendistill.jobs.train_classifier`` runs it.

Every step draws new renders from :func:`make_batch` and fills the rest of its batch with renders of the
steps just before (rendering costs more than the network on a CPU), then perturbs them with label-keeping
augmentations (brightness and per-channel gain, a small shift, blur, noise) so the classifier judges
generated images by shape and colour rather than by pixel-exact render artefacts. Label smoothing keeps it
from being over-confident. A step's renders depend only on (seed, step), so a resumed run re-renders the
window it needs and continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.errors import check_range, key_path
from gendistill.recipe import Loss, Phase, Update
from gendistill.train.config import OptimizerConfig, TrainerConfig

from .classifier import ClassifierConfig, ShapeClassifier
from .dataset import fixed_split, make_batch
from .metrics import colour_accuracy, prompt_accuracy, shape_accuracy

PHASE = "classifier"
"""The recipe's one phase (and module) name."""


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
    x = torch.lerp(x, _blur3(x).to(x.dtype), blur_weight)  # autocast may run the blur's conv in bf16
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


@dataclass
class ClassifierTrainingConfig:
    """How the shapes classifier is trained."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 64
    """Images per step."""
    fresh_per_step: int = 16
    """New renders per step (step 0 renders a whole batch); the rest come from the steps just before."""
    pool_size: int = 4096
    """Renders of earlier steps kept to fill batches from (the last pool_size // fresh_per_step steps)."""
    seed: int = 0
    """Seed of the initial weights, the renders and the augmentations."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, then exponential decay to 5%)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    label_smoothing: float = 0.1
    """Label smoothing of both cross-entropies."""
    checkpoint_every: int = 100
    """Checkpoint every this many steps (and at the end)."""

    def check(self, path: str = "") -> None:
        check_range(key_path(path, "steps"), self.steps, 1)
        check_range(key_path(path, "batch_size"), self.batch_size, 2)
        check_range(key_path(path, "fresh_per_step"), self.fresh_per_step, 1, self.batch_size)
        check_range(key_path(path, "pool_size"), self.pool_size, self.batch_size)
        check_range(key_path(path, "checkpoint_every"), self.checkpoint_every, 0)

    def trainer_config(self) -> TrainerConfig:
        """The loop: AdamW with a warm-up of min(100, steps / 10) steps, no clipping, every loss logged."""
        warmup = max(1, min(100, self.steps // 10))
        optimizer = OptimizerConfig(kind="adamw", lr=self.lr, weight_decay=self.weight_decay, warmup_steps=warmup)
        return TrainerConfig(steps=self.steps, seed=self.seed, optimizers={PHASE: optimizer}, grad_clip=None,
                             checkpoint_every=self.checkpoint_every, log_every=1)


def initial_classifier(seed: int, config: ClassifierConfig | None = None) -> ShapeClassifier:
    """A freshly initialised classifier; its weights depend only on ``seed`` (torch's own stream is kept)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ShapeClassifier(config)


@dataclass(frozen=True)
class ClassifierBatch:
    """Labelled images for one classifier step."""

    images: Tensor
    """(N, 3, H, W) float32 in [0, 1], not yet augmented."""
    labels: Tensor
    """(N, 2) long: [shape_id, colour_id]."""


def render_generator(seed: int, step: int) -> torch.Generator:
    """The generator of ``step``'s new renders: it depends only on (seed, step), and its seed is even, as the
    train split's are (``dataset.split_generator``), so it never replays a held-out stream."""
    mixed = int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(2 * (mixed >> 2))


class RenderWindow:
    """``batch_fn`` of the classifier: step s renders its new images from ``render_generator(seed, s)`` and
    tops its batch up with renders of the last ``pool_size // fresh_per_step`` steps, drawn uniformly with
    replacement; earlier renders are kept as float16. Steps it has not seen (after a resume) are re-rendered."""

    def __init__(self, config: ClassifierTrainingConfig):
        self.config = config
        self.window = max(1, config.pool_size // config.fresh_per_step)
        self._kept: dict[int, tuple[Tensor, Tensor]] = {}
        self.rendered = 0
        """Renders made so far by this object (re-renders after a resume included)."""

    def new_renders(self, step: int) -> tuple[Tensor, Tensor]:
        """The new renders of ``step`` (float32 images, (n, 2) labels)."""
        n = self.config.batch_size if step == 0 else self.config.fresh_per_step
        batch = make_batch(n, render_generator(self.config.seed, step))
        self.rendered += n
        return batch.images, torch.stack([batch.shape_ids, batch.colour_ids], dim=1)

    def __call__(self, step: int, generator: torch.Generator) -> ClassifierBatch:
        images, labels = self.new_renders(step)
        earlier = list(range(max(0, step - self.window), step))
        for k in earlier:
            if k not in self._kept:
                self._keep(k, *self.new_renders(k))
        n_pool = self.config.batch_size - len(images)
        pool = self._draw(earlier, n_pool, generator) if earlier and n_pool > 0 else None
        self._kept = {k: v for k, v in self._kept.items() if k > step - self.window}
        self._keep(step, images, labels)
        if pool is None:
            return ClassifierBatch(images, labels)
        return ClassifierBatch(torch.cat([images, pool[0]]), torch.cat([labels, pool[1]]))

    def _keep(self, step: int, images: Tensor, labels: Tensor) -> None:
        self._kept[step] = (images.half(), labels)

    def _draw(self, steps: list[int], n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` renders drawn uniformly with replacement from those kept of ``steps``."""
        sizes = torch.tensor([len(self._kept[k][1]) for k in steps])
        ends = sizes.cumsum(0)
        idx = torch.randint(0, int(ends[-1]), (n,), generator=generator)
        which = torch.bucketize(idx, ends, right=True)
        offsets = (idx - (ends[which] - sizes[which])).tolist()
        picked = [(self._kept[steps[w]][0][o], self._kept[steps[w]][1][o]) for w, o in zip(which.tolist(), offsets)]
        return torch.stack([p[0] for p in picked]).float(), torch.stack([p[1] for p in picked])


class ClassifierRecipe:
    """Cross-entropy with label smoothing on the shape and colour heads of augmented images; logs the
    batch's prompt accuracy (shape and colour right) as ``accuracy``."""

    def __init__(self, model: ShapeClassifier, label_smoothing: float = 0.1, aug: Augment = Augment()):
        self.model, self.label_smoothing, self.aug = model, label_smoothing, aug

    def phases(self) -> list[Phase]:
        return [Phase(PHASE, list(self.model.parameters()), lr_final=0.05)]

    def modules(self) -> dict[str, nn.Module]:
        return {PHASE: self.model}

    def ema_module(self) -> str | None:
        return None

    def loss(self, batch: ClassifierBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        device = next(self.model.parameters()).device
        images = augment(batch.images, generator, self.aug).to(device)
        labels = batch.labels.to(device)
        out = self.model.train()(images)
        total = (F.cross_entropy(out.shape_logits, labels[:, 0], label_smoothing=self.label_smoothing)
                 + F.cross_entropy(out.colour_logits, labels[:, 1], label_smoothing=self.label_smoothing))
        correct = (out.shape_logits.argmax(-1) == labels[:, 0]) & (out.colour_logits.argmax(-1) == labels[:, 1])
        return Loss(total, {"accuracy": correct.float().mean().item()})

    def after_update(self, update: Update) -> None:
        """Nothing to do between updates."""


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
