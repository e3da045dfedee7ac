"""Batches for step distillation: prompts encoded by the teacher's frozen text encoder, plus real latents.

Two sources: the shapes world (captions and renders, encoded once per caption and per batch), and a plain
list of prompts (for Stable Diffusion teachers, where recipes that need real data take an image folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    """``batch_fn`` for the trainer: random shapes captions, with renders encoded to latents if asked."""

    def __init__(self, model: TextToImageModel, batch_size: int, with_latents: bool = True,
                 view_phrase_prob: float = 0.5):
        self.model, self.batch_size, self.with_latents = model, batch_size, with_latents
        self.view_phrase_prob = view_phrase_prob
        self.encode = CachedPromptEncoder(model)

    def __call__(self, step: int, generator: torch.Generator) -> DistillBatch:
        from gendistill.domains.shapes import make_batch

        shapes = make_batch(self.batch_size, generator, view_phrase_prob=self.view_phrase_prob)
        cond, uncond = self.encode(list(shapes.captions))
        latents = self.model.encode_images(shapes.images, generator) if self.with_latents else None
        return DistillBatch(list(shapes.captions), cond, uncond, latents)


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
