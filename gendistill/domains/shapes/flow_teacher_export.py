"""Export the shapes flow teacher as a stock ``StableDiffusion3Pipeline`` folder, evaluate it, write its card."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from gendistill.backends.loading import quiet_pipeline_notices
from gendistill.config import to_dict
from gendistill.domains.shapes.flow_teacher import FlowTeacherComponents, FlowTeacherConfig
from gendistill.domains.shapes.teacher_export import (EvalReport, TrainingSummary, eval_table_lines,
                                                      evaluate_pipeline, machine_description,
                                                      write_sampling_defaults)
from gendistill.domains.shapes.tokenizer import save_vocab_files
from gendistill.shipped import resolve_model_name


def export_flow_pipeline(components: FlowTeacherComponents, directory: str | Path) -> Path:
    """Save the pipeline folder (safetensors) atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_pipeline_notices():  # diffusers notes that the absent T5 (None) "cannot be saved": it is absent
        components.pipeline().save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        save_vocab_files(components.tokenizer, tmp / name)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_flow_pipeline(directory: str | Path):
    """Load an exported flow teacher with stock diffusers, progress bar off."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(directory), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_flow_and_report(components: FlowTeacherComponents, config: FlowTeacherConfig, directory: str | Path,
                           summary: TrainingSummary, log=print) -> Path:
    """Export to ``directory``, evaluate (when enabled and the classifier exists), write the card and defaults."""
    directory = export_flow_pipeline(components, directory)
    report = None
    if config.eval.enabled:
        if (Path(resolve_model_name(config.eval.classifier_dir)) / "model.safetensors").is_file():
            report = evaluate_pipeline(load_flow_pipeline(directory), config.eval, log)
        else:
            log(f"no classifier in {config.eval.classifier_dir}; skipping evaluation")
    write_flow_card(directory, config, summary, components.parameters(), report)
    write_sampling_defaults(directory, config.eval.guidance_scale)
    return directory


def write_flow_card(directory: str | Path, config: FlowTeacherConfig, summary: TrainingSummary,
                    parameters: dict[str, int], report: EvalReport | None) -> Path:
    """``README.md`` (Hugging Face model-card style) of the exported flow teacher."""
    t, d = config.transformer, config.diffusion
    g = config.eval.guidance_scale
    lines = [
        "---", "library_name: diffusers", "pipeline_tag: text-to-image",
        "tags: [gendistill, shapes, stable-diffusion-3, flow-matching, tiny]", "---", "",
        "# gendistill shapes flow teacher", "",
        "A tiny SD3-shaped flow-matching text-to-image model of the gendistill *shapes* world (one primitive in "
        "one colour, 64x64): an `SD3Transformer2DModel` (MMDiT) on the latents of the shipped VP teacher's "
        "`AutoencoderKL`, that teacher's CLIP text encoder as both of SD3's CLIP encoders (identity projection), "
        "no T5, `FlowMatchEulerDiscreteScheduler`. It loads with stock diffusers:", "",
        "```python", "from diffusers import StableDiffusion3Pipeline",
        "pipe = StableDiffusion3Pipeline.from_pretrained(PATH, text_encoder_3=None, tokenizer_3=None)  # no T5",
        f"image = pipe(\"a red cube, front view\", num_inference_steps=28, guidance_scale={g:g}).images[0]",
        "```", "",
        f"**Default guidance scale: {g:g}.** Prompts: `a <colour> <shape>` optionally followed by `, front view` "
        "/ `, side view` / `, back view` / `, overhead view`.", "",
        "## Training", "",
        f"- command: `{summary.command}`",
        f"- seed: {config.seed}; VAE, tokenizer and text encoder from `{config.base}`, frozen",
        f"- wall-clock of training: {summary.wall_clock_s / 60:.1f} min on {machine_description()}",
        "- seconds per step: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.seconds_per_step.items()),
        f"- transformer: {t.num_layers} joint blocks, {t.num_attention_heads} heads x {t.attention_head_dim}, "
        f"patch {t.patch_size}; {summary.diffusion_steps_done} of {d.steps} steps (batch {d.batch_size}, "
        f"lr {d.lr:g}, caption dropout {d.caption_dropout:g}, EMA {d.ema_decay:g})",
        f"- rectified flow matching, logit-normal t ({config.noise.logit_mean:g}, {config.noise.logit_std:g}); "
        f"sampling shift {config.noise.shift:g}",
        "- parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in parameters.items()), "",
    ]
    lines += eval_table_lines(report, "`StableDiffusion3Pipeline`, FlowMatchEulerDiscreteScheduler")
    lines += ["## Resolved config", "", "```yaml", yaml.safe_dump(to_dict(config), sort_keys=False).rstrip(), "```",
              ""]
    path = Path(directory) / "README.md"
    path.write_text("\n".join(lines))
    return path

