"""Save a trained student as a diffusers folder that stock pipelines sample at the trained timesteps.

Consistency-style students (DMD2, LCM) get an ``LCMScheduler`` whose ``original_inference_steps`` makes
``num_inference_steps=K`` visit ``LCMSchedule(ac, S).timesteps(K)``; progressive students get a trailing
``DDIMScheduler`` that lands on sigma 0. Text encoder, tokenizer and VAE are the teacher's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn


@dataclass(frozen=True)
class StudentSampling:
    """How the exported student is meant to be sampled."""

    kind: Literal["lcm", "ddim"]
    """lcm: consistency sampling (DMD2, LCM); ddim: deterministic DDIM (progressive)."""
    original_steps: int = 50
    """LCM only: the grid the K inference timesteps are taken from."""
    timestep_scaling: float = 10.0
    """LCM only: the boundary-condition scaling the student was trained with."""


def student_scheduler(teacher_scheduler_config: dict, sampling: StudentSampling):
    """A diffusers scheduler with the teacher's noise schedule and the student's sampling rule."""
    from diffusers import DDIMScheduler, LCMScheduler

    base = {k: v for k, v in teacher_scheduler_config.items() if not k.startswith("_")}
    common = dict(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    if sampling.kind == "lcm":
        return LCMScheduler.from_config(base, **common, original_inference_steps=sampling.original_steps,
                                        timestep_scaling=sampling.timestep_scaling)
    if sampling.kind == "ddim":
        return DDIMScheduler.from_config(base, **common)
    raise ValueError(f"unknown student sampling {sampling.kind!r}; choose lcm or ddim")


def student_pipeline(teacher_pipe, student_unet: nn.Module, sampling: StudentSampling, builder=None):
    """The teacher pipeline with the student UNet and scheduler, in memory; ``builder(teacher_pipe, student,
    scheduler)`` makes it instead when given (``BoundRecipe.pipeline_builder``)."""
    from gendistill.backends.loading import quiet_pipeline_notices

    # quiet: the safety checker we leave out on purpose; steps_offset, unused by trailing; a flow teacher's config
    # keys, which DDIM/LCM ignore (MeanFlow's builder replaces that scheduler by a flow map's)
    with quiet_pipeline_notices():
        scheduler = student_scheduler(dict(teacher_pipe.scheduler.config), sampling)
        if builder is not None:
            return builder(teacher_pipe, student_unet, scheduler)
        return type(teacher_pipe)(**{**teacher_pipe.components, "unet": student_unet, "scheduler": scheduler})


def export_student(teacher_pipe, student_unet: nn.Module, sampling: StudentSampling, out_dir: str | Path,
                   builder=None) -> Path:
    """Write the teacher pipeline with the student UNet and scheduler to ``out_dir`` (safetensors)."""
    pipe = student_pipeline(teacher_pipe, student_unet, sampling, builder)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
