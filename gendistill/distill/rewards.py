"""Differentiable rewards on images, for reward fine-tuning a few-step student (Flash-DMD's joint RL).

A ``Reward`` maps images in [0, 1], (B, 3, H, W), and their prompts to one score per image, (B,), that is
differentiable in the pixels, so the student is trained by back-propagating the reward through the VAE
decoder (direct reward back-propagation, as ReFL / DRaFT do for preference models).

- ``ClipReward``: CLIP's image-text cosine similarity through open-clip-torch (any open_clip model; the real
  runs load a pretrained one, the tests build a tiny random one);
- ``BrightnessReward`` and ``SizeReward``: preferences of the shapes world (white background, one object)
  computed from the pixels alone. The teacher is not trained to satisfy them, so a run that maximises one
  shows both the effect of the reward and, without the distillation regulariser, reward hacking.

``RewardConfig`` picks one by name (config key ``reward.name``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.errors import UserError, check_choice, check_range, key_path

LUMA = (0.2126, 0.7152, 0.0722)
"""Rec. 709 luminance weights of linear R, G, B."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's input normalisation (open_clip's default for its models)."""


class Reward(Protocol):
    def __call__(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Images in [0, 1], (B, 3, H, W), and their prompts -> scores (B,), differentiable in ``images``."""


# --- shapes-world preferences ---------------------------------------------------------------------


def object_mask(images: Tensor, threshold: float = 0.15, softness: float = 0.02) -> Tensor:
    """Soft foreground mask (B, 1, H, W) of renders on a white background: a pixel is object when its
    darkest channel is more than ``threshold`` below white (a sigmoid of width ``softness``, so the mask,
    and every reward built on it, has a gradient)."""
    darkness = 1.0 - images.min(dim=1, keepdim=True).values
    return torch.sigmoid((darkness - threshold) / softness)


def luminance(images: Tensor) -> Tensor:
    """Per-pixel luminance (B, 1, H, W)."""
    weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


@dataclass(frozen=True)
class SizeReward:
    """Fraction of the image the object covers (the soft foreground mask's mean): prefers larger objects."""

    threshold: float = 0.15
    softness: float = 0.02

    def __call__(self, images: Tensor, prompts: list[str]) -> Tensor:
        return object_mask(images, self.threshold, self.softness).mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class BrightnessReward:
    """Mean luminance of the object's pixels (``region="object"``, weighted by the soft foreground mask) or
    of the whole image (``"image"``, which the white background dominates: a hackable reward on purpose)."""

    region: Literal["object", "image"] = "object"
    threshold: float = 0.15
    softness: float = 0.02

    def __call__(self, images: Tensor, prompts: list[str]) -> Tensor:
        luma = luminance(images)
        if self.region == "image":
            return luma.mean(dim=(1, 2, 3))
        mask = object_mask(images, self.threshold, self.softness)
        return (mask * luma).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1e-6)


# --- CLIP -----------------------------------------------------------------------------------------


class ClipReward:
    """Cosine similarity of open_clip's image and text embeddings, in [-1, 1] per image.

    The images are resized (bilinear, antialiased: differentiable) to the model's input size and normalised
    with CLIP's statistics; the model is frozen and kept in eval mode, text embeddings are cached per prompt.
    """

    def __init__(self, model: nn.Module, tokenizer, image_size: int | None = None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        size = image_size or getattr(getattr(model, "visual", None), "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self._text: dict[str, Tensor] = {}

    @classmethod
    def load(cls, model_name: str, pretrained: str | None = None, device: torch.device | str = "cpu") -> ClipReward:
        """An open_clip model by name (``pretrained``: a tag or a local checkpoint file; None: random weights)."""
        try:
            import open_clip
        except ImportError as error:
            raise UserError("the clip reward needs open-clip-torch: pip install 'gendistill[eval]'") from error
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        return cls(model, open_clip.get_tokenizer(model_name))

    def text_embeddings(self, prompts: list[str], device: torch.device) -> Tensor:
        missing = sorted({p for p in prompts if p not in self._text})
        if missing:
            with torch.no_grad():
                tokens = self.tokenizer(missing).to(device)
                for prompt, embedding in zip(missing, F.normalize(self.model.encode_text(tokens), dim=-1)):
                    self._text[prompt] = embedding
        return torch.stack([self._text[p] for p in prompts]).to(device)

    def __call__(self, images: Tensor, prompts: list[str]) -> Tensor:
        x = F.interpolate(images, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        mean, std = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1), x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        image = F.normalize(self.model.encode_image((x - mean) / std), dim=-1)
        return (image * self.text_embeddings(prompts, x.device).to(image.dtype)).sum(dim=-1)


# --- config ---------------------------------------------------------------------------------------

RewardName = Literal["size", "brightness", "clip"]


@dataclass
class RewardConfig:
    """Which reward the student is fine-tuned on, and how much of each batch it sees."""

    name: RewardName = "size"
    """size / brightness (shapes-world preferences from the pixels) or clip (image-text similarity)."""
    samples: int = 4
    """Student samples per generator step that are decoded and scored (the first ones of the batch)."""
    resolution: int | None = None
    """Downsample decoded images to this side before scoring (None: as decoded). Keeps the reward cheap."""
    brightness_region: Literal["object", "image"] = "object"
    """brightness: score the object's pixels or the whole image."""
    clip_model: str = "ViT-B-32"
    """clip: the open_clip model name."""
    clip_pretrained: str | None = None
    """clip: an open_clip pretrained tag or a local checkpoint file (None: random weights, for tests only)."""

    def check(self, path: str) -> None:
        check_choice(key_path(path, "name"), self.name, ("size", "brightness", "clip"))
        check_choice(key_path(path, "brightness_region"), self.brightness_region, ("object", "image"))
        check_range(key_path(path, "samples"), self.samples, 1)
        if self.resolution is not None:
            check_range(key_path(path, "resolution"), self.resolution, 8)

    def build(self, device: torch.device | str = "cpu") -> Reward:
        if self.name == "size":
            return SizeReward()
        if self.name == "brightness":
            return BrightnessReward(self.brightness_region)
        return ClipReward.load(self.clip_model, self.clip_pretrained, device)

    def prepare(self, images: Tensor) -> Tensor:
        """``images`` area-downsampled to ``resolution`` when they are larger (differentiable)."""
        if self.resolution is None or max(images.shape[-2:]) <= self.resolution:
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
