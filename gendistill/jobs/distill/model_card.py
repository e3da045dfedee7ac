"""A model card (README.md) for an exported student: how to load and sample it, how it was made, its numbers.

Written beside the diffusers files so a student copied elsewhere or pushed to a hub carries its own
provenance; ``training_config.yaml`` next to it is the resolved config the run used.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import torch

from gendistill.backends.lora import LORA_WEIGHTS_FILE
from gendistill.backends.student_card import StudentCard
from gendistill.jobs.distill.report import DistillReport

RECIPE_NAMES = {"dmd2": "DMD2 (distribution matching with a trainable fake score)",
                "lcm": "latent consistency distillation (LCM)",
                "progressive": "progressive distillation (Salimans & Ho)",
                "finetune": "plain diffusion fine-tuning",
                "flash_dmd": "Flash-DMD (timestep-aware DMD with a low-noise GAN term)",
                "phased_dmd": "Phased DMD (one expert per SNR phase, score matching within subintervals)",
                "boot": "BOOT (data-free bootstrapping along the teacher's ODE, prompts only)",
                "meanflow": "MeanFlow distillation (average velocities u(z, r, t), any step count)",
                "twinflow": "TwinFlow (self-adversarial twin trajectories, one network, no teacher)",
                "multi_cfg": "multi-CFG distillation (FADA: prompt and negative guidance in one pass)",
                "koala": "architecture compression (KOALA / BK-SDM knowledge distillation into a smaller UNet)"}


def write_model_card(pipeline: Path, config, card: StudentCard, report: DistillReport | None,
                     command: str | None) -> Path:
    """Write ``pipeline/README.md`` and copy the run's resolved config to ``pipeline/training_config.yaml``."""
    run_config = pipeline.parent / "config.yaml"
    if run_config.is_file():
        shutil.copyfile(run_config, pipeline / "training_config.yaml")
    sections = [_front_matter(card), _usage(pipeline, card), _lora_usage(pipeline.parent / "lora", config, card),
                _network_size(pipeline, card), _training(config, card, command), _evaluation(report)]
    text = "\n\n".join(section for section in sections if section) + "\n"
    path = pipeline / "README.md"
    path.write_text(text)
    return path


def _front_matter(card: StudentCard) -> str:
    tags = ", ".join(["gendistill", str(card.recipe), f"{card.steps}-step", "distillation"])
    return (f"---\nlibrary_name: diffusers\npipeline_tag: text-to-image\ntags: [{tags}]\n"
            f"base_model: {card.teacher}\n---")


def _usage(pipeline: Path, card: StudentCard) -> str:
    name = RECIPE_NAMES.get(card.recipe, card.recipe)
    guidance = card.guidance or 0.0
    note = ("guidance is distilled in as a w-embedding; `guidance_scale` picks the embedded scale at no extra "
            "network call" if card.recipe == "lcm" and guidance > 0 else
            "prompt and negative guidance are distilled in: `negative_prompt=...`, `negative_guidance_scale=...` "
            "cost no extra network call" if card.recipe == "multi_cfg" else
            "a smaller UNet sampled exactly as its teacher, with the teacher's scheduler and guidance"
            if card.recipe == "koala" else
            "guidance is distilled in: sample with `guidance_scale=0`")
    return (f"# gendistill {card.recipe} student, {_count(card.steps, 'step')}\n\n"
            f"A {card.steps}-step student of `{card.teacher}`, made by {name}. Stock diffusers samples it "
            f"({note}):\n\n```python\nfrom diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained(\"{pipeline}\", safety_checker=None{_trust(pipeline)})\n"
            f"image = pipe(\"a red cube, front view\", num_inference_steps={card.steps}, "
            f"guidance_scale={guidance:g}{_negative_example(card)}).images[0]\n```\n\n"
            f"It takes up to {_count(card.max_steps, 'step')}; `gendistill generate --model {pipeline}` gives the same "
            f"images for the same seed.")


def _negative_example(card: StudentCard) -> str:
    """A multi-CFG student's negative prompt and scale in the usage line (still one network call a step)."""
    return ', negative_prompt="a blue sphere", negative_guidance_scale=0.5' if card.recipe == "multi_cfg" else ""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _trust(pipeline: Path) -> str:
    """A folder that ships its pipeline class (``pipeline.py``: a Phased DMD student's experts) loads with it."""
    return ", trust_remote_code=True" if (pipeline / "pipeline.py").is_file() else ""


def _lora_usage(lora_dir: Path, config, card: StudentCard) -> str:
    """For a LoRA student (its run wrote ``lora_dir``): the LCM-LoRA one-liner on the teacher or a fine-tune of
    it; empty otherwise."""
    if not (lora_dir / LORA_WEIGHTS_FILE).is_file():
        return ""
    extra = ""  # the scheduler settings the student was trained with, where LCMScheduler's defaults differ
    original_steps, scaling = getattr(config.recipe, "num_ddim_timesteps", 50), getattr(config.recipe,
                                                                                      "timestep_scaling", 10.0)
    if original_steps != 50:
        extra += f", original_inference_steps={original_steps}"
    if scaling != 10.0:
        extra += f", timestep_scaling={scaling:g}"
    return (f"## As a LoRA (LCM-LoRA)\n\nThe adapters alone are in `{lora_dir}` "
            f"(`{LORA_WEIGHTS_FILE}`); this folder's UNet is the teacher with them merged in. Apply them to the "
            f"teacher, or to a fine-tune of it, with stock diffusers:\n\n```python\n"
            f"from diffusers import DiffusionPipeline, LCMScheduler\n"
            f"pipe = DiffusionPipeline.from_pretrained(\"{card.teacher}\")\n"
            f"pipe.load_lora_weights(\"{lora_dir}\")\n"
            f"pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config{extra})\n"
            f"image = pipe(\"a red cube, front view\", num_inference_steps={card.steps}, "
            f"guidance_scale={card.guidance or 0.0:g}).images[0]\n```")


def _network_size(pipeline: Path, card: StudentCard) -> str:
    """The student UNet's parameter count against its teacher's (when the teacher is a local folder)."""
    from gendistill.shipped import resolve_model_name

    student = _unet_parameters(pipeline)
    teacher = _unet_parameters(Path(resolve_model_name(str(card.teacher))))
    if student is None or teacher is None or student >= teacher:  # only a compressed student's size is news
        return ""
    return (f"## Size\n\nUNet parameters: {student:,}, against the teacher's {teacher:,} "
            f"({1 - student / teacher:.0%} fewer).")


def _unet_parameters(folder: Path) -> int | None:
    """Parameters in ``folder/unet``'s safetensors file (read from its header), None without one."""
    import math

    from safetensors import safe_open

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def _training(config, card: StudentCard, command: str | None) -> str:
    trainer = config.trainer
    lines = ["## Training", ""]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [f"- recipe `{card.recipe}`, seed {trainer.seed}, {trainer.steps} trainer steps, batch "
              f"{config.data.batch_size}, EMA {trainer.ema_decay} (exported)",
              f"- wall-clock: {card.train_seconds or 0:.0f} s of training on {_hardware(card)}, "
              f"torch {torch.__version__}",
              "- resolved config: `training_config.yaml` in this folder"]
    return "\n".join(lines)


def _evaluation(report: DistillReport | None) -> str:
    if report is None:
        return "## Evaluation\n\nNot measured (the run's data was not the shapes world)."
    return ("## Evaluation (end of the run, shapes world; prompt accuracy by the shipped classifier, FID and "
            "diversity in its feature space)\n\n" + report.markdown())


def _hardware(card: StudentCard) -> str:
    if (card.device or "cpu") != "cpu":
        return card.device
    return f"{card.threads or '?'} CPU thread(s) ({platform.machine()})"
