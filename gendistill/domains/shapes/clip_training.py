"""A small CLIP for the shapes world: open_clip's ``CLIP`` (a tiny ViT and a tiny text transformer) trained
contrastively on renders and their captions, as a recipe of the one trainer.

Loss: CLIP's symmetric cross-entropy over the batch's image-text similarity matrix (Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision", Fig. 3; open_clip's ``ClipLoss``),
with one change the miniature needs: the shapes world has only 40 captions, so a batch of 64 holds many pairs
with the same caption, and a one-hot target would push apart images that match. Each row's target is
uniform over every column with the same caption (as supervised-contrastive losses do).

Zero-shot accuracy (:func:`zero_shot_accuracy`): each held-out render is classified as the caption whose text
embedding is nearest, over all 40 "a <colour> <shape>" captions; shape and colour are scored separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.backends.open_clip_model import build_clip, clip_image_size, preprocess, tokenize
from gendistill.domains.shapes.teacher_data import RenderCache
from gendistill.errors import check_range, key_path
from gendistill.recipe import Loss, Phase, Update

CLIP_PHASE = "clip"


@dataclass
class ClipModelConfig:
    """The towers' sizes (open_clip's ``model_cfg``; the text vocabulary is the shapes tokenizer's)."""

    embed_dim: int = 64
    """Width of the joint image-text embedding."""
    image_width: int = 96
    """Width of the ViT."""
    image_layers: int = 3
    """ViT blocks."""
    image_head_width: int = 32
    """Width of each ViT attention head."""
    patch_size: int = 8
    """ViT patch size in pixels (64x64 renders: 64 patches)."""
    text_width: int = 64
    """Width of the text transformer."""
    text_layers: int = 2
    """Text transformer blocks."""
    text_heads: int = 2
    """Text attention heads."""
    context_length: int = 16
    """Tokens per caption."""

    def check(self, path: str) -> None:
        for name in ("embed_dim", "image_width", "image_layers", "image_head_width", "patch_size", "text_width",
                     "text_layers", "text_heads", "context_length"):
            check_range(key_path(path, name), getattr(self, name), 1)

    def model_cfg(self, vocab_size: int, image_size: int = 64) -> dict:
        """open_clip's ``model_cfg`` dict for these sizes."""
        return {"embed_dim": self.embed_dim,
                "vision_cfg": {"image_size": image_size, "patch_size": self.patch_size, "width": self.image_width,
                               "layers": self.image_layers, "head_width": self.image_head_width, "mlp_ratio": 2.0},
                "text_cfg": {"context_length": self.context_length, "vocab_size": vocab_size,
                             "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers,
                             "mlp_ratio": 2.0}}


@dataclass
class ClipTrainingConfig:
    """``gendistill train-clip``: the model, its data and the loop."""

    model: ClipModelConfig = field(default_factory=ClipModelConfig)
    """The towers."""
    cache_size: int = 8000
    """Renders (random object and camera each) made once and drawn from every step."""
    view_phrase_prob: float = 0.0
    """Probability that a caption carries its view phrase (0: the embedding learns what, not where from)."""
    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 64
    """Image-caption pairs per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, then exponential decay to 10%)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    eval_renders: int = 400
    """Held-out renders for the zero-shot accuracy."""
    checkpoint_every: int = 250
    """Checkpoint every this many steps (and at the end); ``--resume`` continues from the newest."""
    seed: int = 0
    """Seed of the renders, the initialisation and every step's draws."""

    def check(self, path: str) -> None:
        for name in ("cache_size", "steps", "batch_size", "eval_renders"):
            check_range(key_path(path, name), getattr(self, name), 1)
        check_range(key_path(path, "view_phrase_prob"), self.view_phrase_prob, 0.0, 1.0)
        check_range(key_path(path, "lr"), self.lr, 0.0)
        check_range(key_path(path, "checkpoint_every"), self.checkpoint_every, 0)


@dataclass(frozen=True)
class ClipBatch:
    """Renders in [0, 1] (B, 3, H, W) and one caption each."""

    images: Tensor
    captions: list[str]


@dataclass(frozen=True)
class ClipBatches:
    """The trainer's batch function: renders drawn with replacement, with or without their view phrase."""

    renders: RenderCache
    batch_size: int
    view_phrase_prob: float = 0.0

    def __call__(self, step: int, generator: torch.Generator) -> ClipBatch:
        idx = torch.randint(0, len(self.renders), (self.batch_size,), generator=generator)
        with_view = (torch.rand(self.batch_size, generator=generator) < self.view_phrase_prob).tolist()
        captions = [self.renders.view_captions[i] if v else self.renders.captions[i]
                    for i, v in zip(idx.tolist(), with_view)]
        return ClipBatch(self.renders.images[idx].float() / 255.0, captions)


def soft_targets(captions: list[str]) -> Tensor:
    """(B, B) row-stochastic targets: uniform over the columns whose caption equals the row's."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    labels = torch.tensor([ids[c] for c in captions])
    same = (labels[:, None] == labels[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                     targets: Tensor) -> Tensor:
    """Mean of the image->text and text->image cross-entropies of ``logit_scale * I T^T`` against
    ``targets`` (features unit-norm, (B, D))."""
    logits = logit_scale * image_features @ text_features.T
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T))


class ClipRecipe:
    """The trainer's recipe: one phase (``clip``) on the whole model; the logit scale is clamped to 100
    after each update, as open_clip's training does."""

    def __init__(self, model: nn.Module, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self._ids: dict[str, Tensor] = {}

    def phases(self) -> list[Phase]:
        return [Phase(CLIP_PHASE, list(self.model.parameters()), lr_final=0.1)]

    def modules(self) -> dict[str, nn.Module]:
        return {"clip": self.model}

    def ema_module(self) -> str | None:
        return None

    def token_ids(self, captions: list[str]) -> Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._ids]
        if missing:
            self._ids.update(zip(missing, tokenize(self.tokenizer, missing, self.model.context_length)))
        return torch.stack([self._ids[c] for c in captions])

    def loss(self, batch: ClipBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        device = self.model.logit_scale.device
        images = preprocess(batch.images.to(device), clip_image_size(self.model))
        image_features = self.model.encode_image(images, normalize=True)
        text_features = self.model.encode_text(self.token_ids(batch.captions).to(device), normalize=True)
        targets = soft_targets(batch.captions).to(device)
        loss = contrastive_loss(image_features, text_features, self.model.logit_scale.exp(), targets)
        with torch.no_grad():
            hits = (image_features @ text_features.T).argmax(dim=1)
            accuracy = targets[torch.arange(len(hits)), hits].gt(0).float().mean().item()
        return Loss(loss, {"batch_acc": accuracy, "scale": self.model.logit_scale.exp().item()})

    def after_update(self, update: Update) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, 4.6052)


def build_shapes_clip(config: ClipModelConfig, generator: torch.Generator) -> tuple[nn.Module, object, dict]:
    """(model, tokenizer, model_cfg): a randomly initialised CLIP over the shapes tokenizer's vocabulary
    (open_clip initialises from torch's global generator: it is seeded from ``generator`` here)."""
    from gendistill.domains.shapes.tokenizer import build_shapes_tokenizer

    tokenizer = build_shapes_tokenizer(config.context_length)
    model_cfg = config.model_cfg(len(tokenizer))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_clip(model_cfg)
    return model, tokenizer, model_cfg


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot classification of held-out renders against the 40 captions."""

    shape_accuracy: float
    colour_accuracy: float
    both_accuracy: float
    renders: int


@torch.no_grad()
def zero_shot_accuracy(model: nn.Module, tokenizer, n: int = 400, seed: int = 0) -> ZeroShotResult:
    """Classify ``n`` renders of the held-out split (their own seeds, never drawn for training) as the
    nearest of the 40 captions; the share with the right shape, colour and both."""
    from gendistill.domains.shapes.captions import caption
    from gendistill.domains.shapes.dataset import fixed_split
    from gendistill.domains.shapes.scene import all_scenes

    was_training = model.training
    model.eval()
    scenes = all_scenes()
    device = model.logit_scale.device
    ids = tokenize(tokenizer, [caption(s) for s in scenes], model.context_length).to(device)
    text = model.encode_text(ids, normalize=True)
    batch = fixed_split(n, "heldout", seed=seed)
    image = model.encode_image(preprocess(batch.images.to(device), clip_image_size(model)), normalize=True)
    picked = [scenes[i] for i in (image @ text.T).argmax(dim=1).tolist()]
    shape_ok = torch.tensor([p.shape == s.shape for p, s in zip(picked, batch.scenes)])
    colour_ok = torch.tensor([p.colour == s.colour for p, s in zip(picked, batch.scenes)])
    model.train(was_training)
    return ZeroShotResult(shape_ok.float().mean().item(), colour_ok.float().mean().item(),
                          (shape_ok & colour_ok).float().mean().item(), n)
