"""Stable Diffusion / SDXL pipelines whose denoising is split among expert UNets by timestep: how a Phased DMD
student (gendistill.distill.phased_dmd) ships. gendistill copies this file verbatim into every exported folder as
``pipeline.py`` and names its class in ``model_index.json``, so stock diffusers loads the folder with

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

and ``pipe(prompt, num_inference_steps=K)`` samples with the experts switching at the phase boundaries. It
therefore imports only torch and diffusers.

The experts are the components ``unet`` (the highest-noise phase), ``unet_2``, ``unet_3``, ``unet_4``, all stock
``UNet2DConditionModel`` folders; ``switch_timesteps`` (in the pipeline's config) lists, per later expert, the
largest timestep it denoises: expert ``k + 1`` takes every timestep ``t <= switch_timesteps[k]``. The stock
``__call__`` runs unchanged; during it ``self.unet`` is an ``ExpertSwitch`` that forwards each call to its expert.
"""

from __future__ import annotations

import inspect
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from torch import nn

EXPERT_NAMES = ("unet", "unet_2", "unet_3", "unet_4")
"""The experts' component names, from the highest-noise phase down."""
SWITCH_MARGIN = 0.5
"""Half a training timestep: the switch sits between the boundary timestep and the one above it, so it holds for
integer and interpolated timesteps alike (gendistill's sigma switch uses the same point)."""


class ExpertSwitch(nn.Module):
    """Stands in for ``pipe.unet`` during sampling: each call goes to the expert of its timestep; any other
    attribute (``config``, ``dtype``, ``add_embedding``, ...) is the first expert's."""

    def __init__(self, experts: list[nn.Module], switch_timesteps: list[float]):
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.switch_timesteps = [float(t) for t in switch_timesteps]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            experts = self.__dict__.get("_modules", {}).get("experts")
            if experts is None:
                raise
            return getattr(experts[0], name)

    def expert_index(self, timestep) -> int:
        t = float(torch.as_tensor(timestep).flatten()[0])
        return sum(t <= s + SWITCH_MARGIN for s in self.switch_timesteps)

    def forward(self, sample, timestep, *args, **kwargs):
        return self.experts[self.expert_index(timestep)](sample, timestep, *args, **kwargs)


def experts_of(pipe) -> list[nn.Module]:
    """The pipeline's expert UNets, highest-noise phase first."""
    return [getattr(pipe, name) for name in EXPERT_NAMES if getattr(pipe, name, None) is not None]


@contextmanager
def switching_experts(pipe):
    """``pipe.unet`` is an ``ExpertSwitch`` inside the block (set past ``DiffusionPipeline.__setattr__``, which
    would otherwise record the stand-in in the pipeline's config)."""
    first = pipe.unet
    object.__setattr__(pipe, "unet", ExpertSwitch(experts_of(pipe), pipe.config.switch_timesteps))
    try:
        yield
    finally:
        object.__setattr__(pipe, "unet", first)


def ship_code(pipe, save_directory) -> None:
    """Copy this file into the saved folder as ``pipeline.py`` and name the class in ``model_index.json``
    (``["pipeline", class name]``: diffusers' own form for a pipeline class that lives in the folder)."""
    folder = Path(save_directory)
    source = Path(inspect.getsourcefile(type(pipe)))
    if source.resolve() != (folder / "pipeline.py").resolve():
        shutil.copyfile(source, folder / "pipeline.py")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", type(pipe).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _check_switches(experts: list, switch_timesteps) -> list[int]:
    switches = [int(t) for t in (switch_timesteps or [])]
    if len(switches) != len(experts) - 1 or switches != sorted(switches, reverse=True):
        raise ValueError("switch_timesteps needs one decreasing timestep per expert after the first")
    return switches


class _SwitchingExperts:
    """What both phased pipelines add to their stock parent: experts switch during ``__call__``, and saving ships
    this file as the folder's ``pipeline.py``."""

    def __call__(self, *args, **kwargs):
        with switching_experts(self):
            return super().__call__(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        ship_code(self, save_directory)


class PhasedStableDiffusionPipeline(_SwitchingExperts, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` with 2-4 expert UNets switching by timestep (a Phased DMD student)."""

    _optional_components = [*StableDiffusionPipeline._optional_components, "unet_3", "unet_4"]

    def __init__(self, vae, text_encoder, tokenizer, unet, unet_2, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False, unet_3=None,
                 unet_4=None, switch_timesteps: list[int] | None = None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.register_modules(unet_2=unet_2, unet_3=unet_3, unet_4=unet_4)
        self.register_to_config(switch_timesteps=_check_switches(experts_of(self), switch_timesteps))


class PhasedStableDiffusionXLPipeline(_SwitchingExperts, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with 2-4 expert UNets switching by timestep (a Phased DMD student)."""

    _optional_components = [*StableDiffusionXLPipeline._optional_components, "unet_3", "unet_4"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, unet_2, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True,
                 add_watermarker: bool | None = None, unet_3=None, unet_4=None,
                 switch_timesteps: list[int] | None = None):
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, image_encoder,
                         feature_extractor, force_zeros_for_empty_prompt, add_watermarker)
        self.register_modules(unet_2=unet_2, unet_3=unet_3, unet_4=unet_4)
        self.register_to_config(switch_timesteps=_check_switches(experts_of(self), switch_timesteps))
