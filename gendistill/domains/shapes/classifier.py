"""The shapes evaluator network: a small CNN that reads shape and colour off a 64x64 render (DESIGN.md §5).

Its penultimate embedding (global-average-pooled last conv block, ``features``) is what FID and diversity
are measured on. A trained classifier is a folder with ``model.safetensors`` and ``config.json``; the one the
project ships lives in ``assets/shapes-classifier``; ``python -m gendistill.jobs.train_classifier`` trains one
(the recipe is in ``classifier_training.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.errors import UserError
from gendistill.shipped import resolve_model_name, shipped_models_dir

from .scene import COLOURS, SHAPES, colour_index, shape_index

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_NAME = "gendistill-shapes-classifier"
DEFAULT_DIR = shipped_models_dir() / "shapes-classifier"
"""Where the shipped classifier lives (package data: found in a checkout and in an installed wheel)."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a :class:`ShapeClassifier`."""

    widths: tuple[int, ...] = (16, 32, 64, 128)
    """Channels per resolution stage; each stage after the first halves the resolution. Last = feature size."""
    input_size: int = 32
    """Images are area-downsampled to this square size before the first convolution."""
    shapes: tuple[str, ...] = field(default_factory=lambda: tuple(SHAPES))
    """Shape names in logit order."""
    colours: tuple[str, ...] = field(default_factory=lambda: tuple(COLOURS))
    """Colour names in logit order."""

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


@dataclass
class ClassifierOutput:
    """Per-image classifier outputs, batched along dim 0."""

    shape_logits: Tensor
    """(N, num_shapes)."""
    colour_logits: Tensor
    """(N, num_colours)."""
    features: Tensor
    """(N, F) penultimate embedding used for FID and diversity."""


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU())


class ShapeClassifier(nn.Module):
    """Shape and colour classifier on (N, 3, H, W) RGB images in [0, 1] (renders are 64x64)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        layers, c_prev = [], 3
        for i, width in enumerate(config.widths):
            layers += [_conv(c_prev, width, stride=1 if i == 0 else 2), _conv(width, width)]
            c_prev = width
        self.body = nn.Sequential(*layers)
        self.shape_head = nn.Linear(config.feature_dim, len(config.shapes))
        self.colour_head = nn.Linear(config.feature_dim, len(config.colours))

    def features(self, images: Tensor) -> Tensor:
        """(N, F) embedding: global average of the last conv block."""
        x = images.clamp(0, 1)
        if x.shape[-1] != self.config.input_size or x.shape[-2] != self.config.input_size:
            x = F.interpolate(x, size=(self.config.input_size,) * 2, mode="area")
        return self.body(x * 2 - 1).mean(dim=(-2, -1))

    def forward(self, images: Tensor) -> ClassifierOutput:
        feats = self.features(images)
        return ClassifierOutput(self.shape_head(feats), self.colour_head(feats), feats)

    @torch.no_grad()
    def classify(self, images: Tensor, batch_size: int = 256) -> ClassifierOutput:
        """Eval-mode outputs for any number of images, in chunks, returned on the CPU as float32."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            chunks = [self(chunk.to(device=device, dtype=torch.float32)) for chunk in images.split(batch_size)]
        finally:
            self.train(was_training)
        return ClassifierOutput(*(torch.cat([getattr(c, name) for c in chunks]).float().cpu()
                                  for name in ("shape_logits", "colour_logits", "features")))


# ----------------------------------------------------------------------------- labels

def scene_key(scene) -> tuple[str, str]:
    """``(shape, colour)`` of a Scene: what a prompt asks for, ignoring the view."""
    return (scene.shape, scene.colour)


def scene_labels(scenes: Sequence) -> tuple[Tensor, Tensor]:
    """(shape_ids, colour_ids) long tensors for a sequence of Scenes, in the classifier's logit order."""
    shape_ids = [shape_index(s.shape) for s in scenes]
    colour_ids = [colour_index(s.colour) for s in scenes]
    return torch.tensor(shape_ids, dtype=torch.long), torch.tensor(colour_ids, dtype=torch.long)


# ----------------------------------------------------------------------------- save / load

def classifier_fingerprint(model: ShapeClassifier) -> str:
    """A short hash of the weights: cached reference statistics are only reused for the same classifier."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_classifier(model: ShapeClassifier, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT_NAME})
    tmp.replace(directory / WEIGHTS_NAME)
    config = {"format": FORMAT_NAME, "version": 1, **asdict(model.config)}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_classifier(directory: str | Path = DEFAULT_DIR, device: str | torch.device = "cpu") -> ShapeClassifier:
    """Load a classifier folder written by :func:`save_classifier` (or the shipped one by its short name,
    ``shapes-classifier``), in eval mode."""
    from safetensors.torch import load_file

    directory = Path(resolve_model_name(str(directory)))
    weights, config_path = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    if not weights.is_file() or not config_path.is_file():
        raise UserError(f"no shapes classifier in {directory}: expected {WEIGHTS_NAME} and {CONFIG_NAME}; "
                        "make one with `python -m gendistill.jobs.train_classifier --out DIR`")
    raw = json.loads(config_path.read_text())
    if raw.get("format") != FORMAT_NAME:
        raise UserError(f"{config_path} is not a shapes-classifier config (format={raw.get('format')!r})")
    config = ClassifierConfig(widths=tuple(raw["widths"]), input_size=int(raw["input_size"]),
                              shapes=tuple(raw["shapes"]), colours=tuple(raw["colours"]))
    if config.shapes != tuple(SHAPES) or config.colours != tuple(COLOURS):
        raise UserError(f"classifier in {directory} was trained on labels {config.shapes} / {config.colours}, "
                        f"but the shapes domain now has {tuple(SHAPES)} / {tuple(COLOURS)}; retrain it")
    model = ShapeClassifier(config)
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval()
