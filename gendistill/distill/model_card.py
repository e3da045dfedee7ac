"""A model card (README.md) for an exported student: how to load and sample it, how it was made, its numbers.

Written beside the diffusers files so a student copied into assets/ or pushed to a hub carries its own
provenance; ``training_config.yaml`` next to it is the resolved config the run used.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import torch

from gendistill.distill.report import DistillReport

RECIPE_NAMES = {"dmd2": "DMD2 (distribution matching with a trainable fake score)",
                "lcm": "latent consistency distillation (LCM)",
                "progressive": "progressive distillation (Salimans & Ho)"}


def write_model_card(pipeline: Path, config, meta: dict, report: DistillReport | None,
                     command: str | None) -> Path:
    """Write ``pipeline/README.md`` and copy the run's resolved config to ``pipeline/training_config.yaml``."""
    run_config = pipeline.parent / "config.yaml"
    if run_config.is_file():
        shutil.copyfile(run_config, pipeline / "training_config.yaml")
    card = "\n\n".join([_front_matter(meta), _usage(pipeline, meta), _training(config, meta, command),
                        _evaluation(report)]) + "\n"
    path = pipeline / "README.md"
    path.write_text(card)
    return path


def _front_matter(meta: dict) -> str:
    tags = ", ".join(["gendistill", meta["recipe"], f"{meta['steps']}-step", "distillation"])
    return (f"---\nlibrary_name: diffusers\npipeline_tag: text-to-image\ntags: [{tags}]\n"
            f"base_model: {meta['teacher']}\n---")


def _usage(pipeline: Path, meta: dict) -> str:
    name = RECIPE_NAMES.get(meta["recipe"], meta["recipe"])
    guidance = meta["guidance"]
    note = ("guidance is distilled in as a w-embedding; `guidance_scale` picks the embedded scale at no extra "
            "network call" if meta["recipe"] == "lcm" and guidance > 0 else
            "guidance is distilled in: sample with `guidance_scale=0`")
    return (f"# gendistill {meta['recipe']} student, {meta['steps']} steps\n\n"
            f"A {meta['steps']}-step student of `{meta['teacher']}`, made by {name}. Stock diffusers samples it "
            f"({note}):\n\n```python\nfrom diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained(\"{pipeline}\", safety_checker=None)\n"
            f"image = pipe(\"a red cube, front view\", num_inference_steps={meta['steps']}, "
            f"guidance_scale={guidance:g}).images[0]\n```\n\n"
            f"It takes up to {meta['max_steps']} steps; `gendistill generate --model {pipeline}` gives the same "
            f"images for the same seed.")


def _training(config, meta: dict, command: str | None) -> str:
    trainer = config.trainer
    lines = ["## Training", ""]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [f"- recipe `{meta['recipe']}`, seed {trainer.seed}, {trainer.steps} trainer steps, batch "
              f"{config.data.batch_size}, EMA {trainer.ema_decay} (exported)",
              f"- wall-clock: {meta['train_seconds']:.0f} s of training on {_hardware(meta)}, torch {torch.__version__}",
              "- resolved config: `training_config.yaml` in this folder"]
    return "\n".join(lines)


def _evaluation(report: DistillReport | None) -> str:
    if report is None:
        return "## Evaluation\n\nNot measured (the run's data was not the shapes world)."
    return ("## Evaluation (end of the run, shapes world; prompt accuracy by the shipped classifier, FID and "
            "diversity in its feature space)\n\n" + report.markdown())


def _hardware(meta: dict) -> str:
    if meta.get("device", "cpu") != "cpu":
        return meta["device"]
    return f"{meta.get('threads', '?')} CPU thread(s) ({platform.machine()})"
