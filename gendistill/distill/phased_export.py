"""The exported Phased DMD student: the teacher's components plus one expert UNet per phase, in the pipeline class
that ``backends/phased_pipeline.py`` ships inside the folder (stock diffusers loads it with
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``)."""

from __future__ import annotations

import inspect

from torch import nn

from gendistill.backends.phased_pipeline import (
    EXPERT_NAMES,
    PhasedStableDiffusionPipeline,
    PhasedStableDiffusionXLPipeline,
)


def phased_pipeline(teacher_pipe, experts: nn.ModuleList, scheduler, switch_timesteps: list[int]):
    """The phased pipeline of ``teacher_pipe``'s family (SD or SDXL) with ``experts`` as ``unet``, ``unet_2``, ...,
    expert ``k + 1`` denoising the timesteps ``<= switch_timesteps[k]``."""
    if len(experts) > len(EXPERT_NAMES):
        raise ValueError(f"a phased pipeline holds at most {len(EXPERT_NAMES)} experts, got {len(experts)}")
    sdxl = getattr(teacher_pipe, "text_encoder_2", None) is not None
    cls = PhasedStableDiffusionXLPipeline if sdxl else PhasedStableDiffusionPipeline
    accepted = inspect.signature(cls.__init__).parameters
    own = (*EXPERT_NAMES, "scheduler")
    shared = {k: v for k, v in teacher_pipe.components.items() if k in accepted and k not in own}
    return cls(**shared, **dict(zip(EXPERT_NAMES, experts)), scheduler=scheduler,
               switch_timesteps=list(switch_timesteps))
