"""Measure a text-to-image model on the shapes world: sample every prompt, classify, compare with renders.

The same function serves ``gendistill eval``, the trainer's periodic evaluation, and the benchmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gendistill.backends.student_card import StudentCard
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.domains.shapes import all_scenes, caption
from gendistill.domains.shapes.classifier import DEFAULT_DIR as DEFAULT_CLASSIFIER_DIR, ShapeClassifier, load_classifier
from gendistill.domains.shapes.metrics import ImageQuality, ReferenceStats, cached_reference_stats, evaluate_images
from gendistill.errors import UserError
from gendistill.backends.generation import GenerationRequest, generate
from gendistill.shipped import resolve_model_name

CLASSIFIER_DIR = DEFAULT_CLASSIFIER_DIR
"""The shipped shapes classifier (package data)."""


@dataclass(frozen=True)
class ModelQuality:
    """Quality and cost of one sampling setting."""

    steps: int
    sampler: str
    guidance: float
    base_steps: int
    prompt_accuracy: float
    shape_accuracy: float
    colour_accuracy: float
    fid: float
    diversity: float
    nfe: float
    images_per_second: float
    ms_per_image: float
    num_images: int

    def as_row(self) -> dict:
        return asdict(self)


@dataclass
class ShapesEvaluator:
    """The classifier and its reference statistics, loaded once."""

    classifier: ShapeClassifier
    reference: ReferenceStats

    @staticmethod
    def load(classifier_dir: str | Path = CLASSIFIER_DIR, n_per_scene: int = 16) -> ShapesEvaluator:
        classifier_dir = resolve_model_name(str(classifier_dir))  # a folder, or a short name: shapes-classifier
        classifier = load_classifier(classifier_dir)  # its folder also holds the cached reference statistics
        return ShapesEvaluator(classifier, cached_reference_stats(classifier, classifier_dir, n_per_scene))

    def score(self, images: torch.Tensor, scenes) -> ImageQuality:
        return evaluate_images(self.classifier, images, scenes, self.reference)


def format_table(rows: list[tuple[str, ModelQuality]]) -> str:
    """A markdown table of (label, quality) rows."""
    head = "| model | steps | sampler | guidance | NFE | prompt acc | shape acc | colour acc | FID | diversity | ms/image |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in rows:
        steps = f"{r.base_steps}+{r.steps - r.base_steps}" if r.base_steps else str(r.steps)
        lines.append(f"| {label} | {steps} | {r.sampler} | {r.guidance:g} | {r.nfe:g} | {r.prompt_accuracy:.3f} | "
                     f"{r.shape_accuracy:.3f} | {r.colour_accuracy:.3f} | {r.fid:.2f} | {r.diversity:.3f} | "
                     f"{r.ms_per_image:.1f} |")
    return "\n".join(lines)


def default_guidance(model: TextToImageModel, folder: str | Path) -> float:
    """The guidance a model is meant to be sampled with: its ``gendistill.json`` says, else 0 for
    consistency students (LCMScheduler) and 5 for everything else. ``folder`` may be a shipped model's
    short name."""
    card = StudentCard.read(resolve_model_name(str(folder)))
    if card is not None:
        return card.guidance if card.guidance is not None else 5.0
    return 0.0 if model.default_sampler() == "consistency" else 5.0


def evaluation_scenes(num_samples: int) -> list:
    """``num_samples`` scenes cycling through all 40 (shape, colour) pairs, so each prompt gets several seeds."""
    if num_samples < 2:
        raise UserError(f"num-samples must be at least 2, got {num_samples}")
    scenes = all_scenes()
    return [scenes[i % len(scenes)] for i in range(num_samples)]


@torch.inference_mode()
def evaluate_model(model: TextToImageModel, evaluator: ShapesEvaluator, steps: int, sampler: str = "auto",
                   guidance: float = 5.0, num_samples: int = 160, seed: int = 0, batch_size: int = 80,
                   base: TextToImageModel | None = None, base_steps: int = 0, base_guidance: float = 1.0,
                   images_out: list | None = None) -> ModelQuality:
    """Sample ``num_samples`` images over all prompts and score them; optionally keep the images."""
    scenes = evaluation_scenes(num_samples)
    images, nfe, seconds = [], 0.0, 0.0
    for start in range(0, num_samples, batch_size):
        chunk = scenes[start:start + batch_size]
        request = GenerationRequest.for_prompts([caption(s) for s in chunk], steps=steps, sampler=sampler,
                                                guidance=guidance, seed=seed + start, base_steps=base_steps,
                                                base_guidance=base_guidance)
        result = generate(model, request, base, progress=False)
        images.append(result.images.cpu())
        nfe, seconds, label = result.nfe, seconds + result.seconds, result.sampler
    images = torch.cat(images)
    if images_out is not None:
        images_out.append(images)
    quality = evaluator.score(images, scenes)
    return ModelQuality(steps, label, guidance, base_steps, quality.prompt_accuracy, quality.shape_accuracy,
                        quality.colour_accuracy, quality.fid, quality.diversity, nfe, num_samples / seconds,
                        1000 * seconds / num_samples, num_samples)


def judged_shapes(judge, images: torch.Tensor) -> torch.Tensor:
    """The shape a zero-shot judge (``backends.zero_shot_judge.ZeroShotJudge``) reads in each image, as indices
    into SHAPES: its lowest-error caption ("a red cube", "an orange cube", ...) over every colour (sketches and
    stylised images have no colour of the world, so the colour is left to the judge)."""
    from gendistill.domains.shapes.scene import SHAPES

    scenes = all_scenes()
    errors = judge.judge(images, [caption(s) for s in scenes]).errors
    per_shape = torch.stack([errors[:, [i for i, s in enumerate(scenes) if s.shape == shape]].amin(dim=1)
                             for shape in SHAPES], dim=1)
    return per_shape.argmin(dim=1)
