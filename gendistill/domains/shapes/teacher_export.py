"""Export the trained shapes teacher as a stock diffusers folder, evaluate it, and write its model card."""

from __future__ import annotations

import copy
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import Tensor

from gendistill.config import to_dict
from gendistill.domains.shapes.teacher import EvalConfig, TeacherComponents, TeacherConfig, count_parameters
from gendistill.shipped import resolve_model_name
from gendistill.domains.shapes.tokenizer import save_vocab_files


def export_pipeline(components: TeacherComponents, directory: str | Path,
                    ema: dict[str, Tensor] | None = None) -> Path:
    """Save a ``StableDiffusionPipeline`` folder (safetensors) atomically; ``ema`` (keys ``unet.*`` and
    ``text_encoder.*``), when given, replaces those weights in the saved copy."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    unet, text_encoder = copy.deepcopy(components.unet), copy.deepcopy(components.text_encoder)
    for prefix, module in (("unet.", unet), ("text_encoder.", text_encoder)):
        sub = {k[len(prefix):]: v for k, v in (ema or {}).items() if k.startswith(prefix)}
        if sub:
            module.load_state_dict(sub, strict=False)
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=text_encoder, tokenizer=components.tokenizer, unet=unet,
        scheduler=components.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    save_vocab_files(components.tokenizer, tmp / "tokenizer")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_pipeline(directory: str | Path):
    """Load an exported teacher with stock diffusers, progress bar off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(directory), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- evaluation


@dataclass
class StepQuality:
    """Evaluator scores of images sampled with one number of steps."""

    steps: int
    prompt_accuracy: float
    shape_accuracy: float
    colour_accuracy: float
    fid: float
    diversity: float
    num_images: int
    seconds: float
    """Wall-clock of sampling all ``num_images``."""


@dataclass
class EvalReport:
    """Evaluation of an exported teacher."""

    guidance_scale: float
    rows: list[StepQuality] = field(default_factory=list)
    seconds_64_images_50_steps: float | None = None
    """Wall-clock of one stock-pipeline call: 64 prompts, 50 guided steps."""


def sample_images(pipe, prompts: list[str], steps: int, guidance_scale: float, generator: torch.Generator,
                  batch_size: int = 64) -> Tensor:
    """(N, 3, 64, 64) images in [0, 1] from the stock pipeline, in batches."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        out = pipe(prompts[start:start + batch_size], num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="pt")
        chunks.append(out.images.float().cpu())
    return torch.cat(chunks)


def evaluate_pipeline(pipe, cfg: EvalConfig, log=print) -> EvalReport:
    """Sample every (shape, colour) at each step count in ``cfg.steps`` and score with the shapes evaluator."""
    from gendistill.domains.shapes.captions import caption
    from gendistill.domains.shapes.classifier import load_classifier
    from gendistill.domains.shapes.metrics import cached_reference_stats, evaluate_images
    from gendistill.domains.shapes.scene import all_scenes

    classifier_dir = resolve_model_name(cfg.classifier_dir)
    classifier = load_classifier(classifier_dir)
    reference = cached_reference_stats(classifier, classifier_dir)
    scenes = [s for s in all_scenes() for _ in range(cfg.images_per_scene)]
    prompts = [caption(s) for s in scenes]
    report = EvalReport(cfg.guidance_scale)
    for steps in cfg.steps:
        start = time.perf_counter()
        images = sample_images(pipe, prompts, steps, cfg.guidance_scale, torch.Generator().manual_seed(cfg.seed))
        seconds = time.perf_counter() - start
        q = evaluate_images(classifier, images, scenes, reference)
        row = StepQuality(steps, q.prompt_accuracy, q.shape_accuracy, q.colour_accuracy, q.fid, q.diversity,
                          q.num_images, seconds)
        report.rows.append(row)
        log(f"eval steps={steps}: prompt_acc={row.prompt_accuracy:.3f} shape={row.shape_accuracy:.3f} "
            f"colour={row.colour_accuracy:.3f} fid={row.fid:.2f} diversity={row.diversity:.3f} ({seconds:.0f}s)")
    if cfg.timing:
        report.seconds_64_images_50_steps = time_sampling(pipe, cfg.guidance_scale)
    return report


def time_sampling(pipe, guidance_scale: float, n: int = 64, steps: int = 50) -> float:
    """Seconds of one stock-pipeline call making ``n`` images with ``steps`` guided steps."""
    prompts = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"] * (n // 4)
    pipe(prompts[:4], num_inference_steps=2, guidance_scale=guidance_scale, output_type="pt")  # warm-up
    start = time.perf_counter()
    pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
         generator=torch.Generator().manual_seed(0), output_type="pt")
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- model card


@dataclass
class CardInfo:
    """What the model card states."""

    command: str
    config: TeacherConfig
    wall_clock_s: float
    seconds_per_step: dict[str, float]
    parameters: dict[str, int]
    scaling_factor: float
    diffusion_steps_done: int
    eval: EvalReport | None = None


def write_model_card(directory: str | Path, info: CardInfo) -> Path:
    """Write ``README.md`` (Hugging Face model-card style) into the exported folder."""
    cfg = info.config
    lines = [
        "---", "library_name: diffusers", "pipeline_tag: text-to-image",
        "tags: [gendistill, shapes, stable-diffusion, tiny]", "---", "",
        "# gendistill shapes teacher",
        "",
        "A tiny Stable-Diffusion-shaped text-to-image model of the gendistill *shapes* world (one primitive in "
        "one colour, rendered at 64x64): CLIPTokenizer with the domain's words, CLIPTextModel, AutoencoderKL "
        "(64x64x3 -> 16x16x4), UNet2DConditionModel, DDIMScheduler. It loads with stock diffusers:",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained(PATH, safety_checker=None)",
        f"image = pipe(\"a red cube, front view\", num_inference_steps=50, guidance_scale={cfg.eval.guidance_scale:g}).images[0]",
        "```",
        "",
        f"**Default guidance scale: {cfg.eval.guidance_scale:g}.** Prompts: `a <colour> <shape>` optionally "
        "followed by `, front view` / `, side view` / `, back view` / `, overhead view`.",
        "",
        "## Training",
        "",
        f"- command: `{info.command}`",
        f"- seed: {cfg.seed}",
        f"- wall-clock of training: {info.wall_clock_s / 60:.1f} min on {machine_description()}",
        "- seconds per step: " + ", ".join(f"{k} {v:.3f}" for k, v in info.seconds_per_step.items()),
        f"- VAE steps: {cfg.vae.steps} (batch {cfg.vae.batch_size}); text encoder + UNet steps: "
        f"{info.diffusion_steps_done} of {cfg.diffusion.steps} (batch {cfg.diffusion.batch_size}, lr {cfg.diffusion.lr:g}, caption dropout "
        f"{cfg.diffusion.caption_dropout:g})",
        "- parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in info.parameters.items()),
        f"- latents: channel means folded into the VAE biases, scaling_factor = {info.scaling_factor:.4f} (1/std)",
        f"- noise: {cfg.model.noise.prediction_type}, zero terminal SNR {cfg.model.noise.zero_terminal_snr}, "
        f"{cfg.model.noise.timestep_spacing} spacing",
        "",
    ]
    lines += eval_table_lines(info.eval, "Stock `StableDiffusionPipeline`, DDIM")
    lines += ["## Resolved config", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    path = Path(directory) / "README.md"
    path.write_text("\n".join(lines))
    return path


def eval_table_lines(report: EvalReport | None, sampling: str) -> list[str]:
    """The card's evaluation section; ``sampling`` names the pipeline and scheduler that made the images."""
    if report is None:
        return ["## Evaluation", "", "Not evaluated (eval.enabled is false or no classifier was found).", ""]
    lines = ["## Evaluation", "",
             f"{sampling}, guidance {report.guidance_scale:g}; scored by the shapes "
             "classifier (`assets/shapes-classifier`): prompt accuracy (shape and colour right), FID of "
             "classifier features against held-out renders, diversity (generated / real mean pairwise "
             "feature distance per prompt).", "",
             "| steps | prompt acc. | shape acc. | colour acc. | FID | diversity | images | s/image |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report.rows:
        lines.append(f"| {r.steps} | {r.prompt_accuracy:.3f} | {r.shape_accuracy:.3f} | {r.colour_accuracy:.3f} "
                     f"| {r.fid:.2f} | {_fmt(r.diversity)} | {r.num_images} | {r.seconds / r.num_images:.3f} |")
    if report.seconds_64_images_50_steps is not None:
        lines += ["", f"64 images, 50 guided steps, one pipeline call: {report.seconds_64_images_50_steps:.1f} s "
                  f"on {machine_description()}."]
    return lines + [""]


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.3f}"


def machine_description() -> str:
    cores = os.cpu_count() or 0
    return f"{cores} CPU cores ({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class TrainingSummary:
    """How the training went, as the model card states it."""

    command: str
    """The command that made the teacher, as a user would type it."""
    wall_clock_s: float
    """Seconds of training (all stages, all resumed runs)."""
    seconds_per_step: dict[str, float]
    """Mean seconds per optimizer step of each stage."""
    diffusion_steps_done: int
    """Text encoder + UNet steps the exported weights had."""


def export_and_report(components: TeacherComponents, config: TeacherConfig, directory: str | Path,
                      summary: TrainingSummary, log=print) -> Path:
    """Export the teacher to ``directory``, evaluate it (when ``config.eval.enabled`` and the classifier
    exists), and write its model card and sampling defaults."""
    directory = export_pipeline(components, directory)
    report = None
    if config.eval.enabled:
        if (Path(resolve_model_name(config.eval.classifier_dir)) / "model.safetensors").is_file():
            report = evaluate_pipeline(load_pipeline(directory), config.eval, log)
        else:
            log(f"no classifier in {config.eval.classifier_dir}; skipping evaluation")
    params = {name: count_parameters(getattr(components, name)) for name in ("text_encoder", "vae", "unet")}
    info = CardInfo(summary.command, config, summary.wall_clock_s, summary.seconds_per_step, params,
                    float(components.vae.config.scaling_factor), summary.diffusion_steps_done, report)
    write_model_card(directory, info)
    write_sampling_defaults(directory, config.eval.guidance_scale)
    return directory


def write_sampling_defaults(directory: str | Path, guidance_scale: float) -> None:
    """``gendistill.json``: the guidance the teacher is meant to be sampled with (read by gendistill.domains.shapes.evaluation)."""
    from gendistill.backends.student_card import StudentCard

    StudentCard(guidance=guidance_scale).write(directory)
