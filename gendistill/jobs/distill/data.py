"""Batches for step distillation: prompts encoded by the teacher's frozen text encoder, plus real latents.

Three sources: the shapes world (captions and renders), a folder of captioned images, and a plain list of
prompts (no real data: enough for DMD2 without its GAN term, and for progressive with teacher data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.denoiser import TextCondition
from gendistill.distill.models import DistillBatch
from gendistill.errors import UserError


@dataclass
class CachedPromptEncoder:
    """Encodes prompts once each (the shapes world has a few hundred distinct captions)."""

    model: TextToImageModel
    cache: dict[str, tuple[TextCondition, TextCondition]] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[TextCondition, TextCondition]:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            cond, uncond = self.model.encode_batch(missing)
            for i, prompt in enumerate(missing):
                self.cache[prompt] = (cond.row(i), uncond.row(i))
        conds = [self.cache[p] for p in prompts]
        return TextCondition.concat([c for c, _ in conds]), TextCondition.concat([u for _, u in conds])


class ShapesBatches:
    """``batch_fn`` for the trainer: random shapes captions, with renders encoded to latents if asked (without
    latents nothing is rendered: the captions alone are drawn, as ``make_batch`` draws them)."""

    def __init__(self, model: TextToImageModel, batch_size: int, with_latents: bool = True,
                 view_phrase_prob: float = 0.5, camera_distance: float | None = None, image: str = "rgb"):
        self.model, self.batch_size, self.with_latents, self.image = model, batch_size, with_latents, image
        self.view_phrase_prob, self.camera_distance = view_phrase_prob, camera_distance
        self.encode = CachedPromptEncoder(model)

    def __call__(self, step: int, generator: torch.Generator) -> DistillBatch:
        from gendistill.domains.shapes import make_batch
        from gendistill.domains.shapes.dataset import make_captions

        if not self.with_latents:  # prompts only: the same captions, no render
            prompts = make_captions(self.batch_size, generator, self.view_phrase_prob, distance=self.camera_distance)
            cond, uncond = self.encode(prompts)
            return DistillBatch(prompts, cond, uncond, None)
        shapes = make_batch(self.batch_size, generator, view_phrase_prob=self.view_phrase_prob,
                            distance=self.camera_distance)
        cond, uncond = self.encode(list(shapes.captions))
        images = shapes.images
        if self.image == "depth":
            from gendistill.domains.shapes.depth import depth_image

            images = depth_image(shapes.depth, shapes.alpha, shapes.cameras[0].distance)
        images = F.interpolate(images, size=self.model.image_size(), mode="area")  # tiny test models
        return DistillBatch(list(shapes.captions), cond, uncond, self.model.encode_images(images, generator))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class ImageFolderBatches:
    """``batch_fn`` over a folder of images with same-named ``.txt`` captions (``cat.png`` + ``cat.txt``),
    centre-cropped and resized to the teacher's resolution, encoded to real latents."""

    def __init__(self, model: TextToImageModel, folder: str | Path, batch_size: int):
        folder = Path(folder)
        self.items = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                            and p.with_suffix(".txt").is_file()) if folder.is_dir() else []
        if not self.items:
            raise UserError(f"no captioned images in {folder}: expected image files with same-named .txt captions")
        self.model, self.batch_size = model, batch_size
        self.encode = CachedPromptEncoder(model)

    def __call__(self, step: int, generator: torch.Generator) -> DistillBatch:
        picks = torch.randint(len(self.items), (self.batch_size,), generator=generator).tolist()
        paths = [self.items[i] for i in picks]
        prompts = [p.with_suffix(".txt").read_text().strip() for p in paths]
        images = torch.stack([load_square_image(p, self.model.image_size()[0]) for p in paths])
        cond, uncond = self.encode(prompts)
        return DistillBatch(prompts, cond, uncond, self.model.encode_images(images, generator))


def load_square_image(path: Path, size: int) -> torch.Tensor:
    """An RGB image centre-cropped to a square and resized to ``size``, (3, size, size) in [0, 1]."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


class PromptListBatches:
    """``batch_fn`` drawing prompts uniformly from a list (no real latents)."""

    def __init__(self, model: TextToImageModel, prompts: list[str], batch_size: int):
        if not prompts:
            raise UserError("the prompt list is empty; give at least one prompt")
        self.prompts, self.batch_size = prompts, batch_size
        self.encode = CachedPromptEncoder(model)

    def __call__(self, step: int, generator: torch.Generator) -> DistillBatch:
        picks = torch.randint(len(self.prompts), (self.batch_size,), generator=generator).tolist()
        prompts = [self.prompts[i] for i in picks]
        cond, uncond = self.encode(prompts)
        return DistillBatch(prompts, cond, uncond, None)
