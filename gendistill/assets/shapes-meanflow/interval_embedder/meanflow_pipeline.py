"""Stable Diffusion 3 with a MeanFlow student: one checkpoint that samples at any step count (how a
``gendistill.distill.meanflow`` student ships). gendistill copies this file verbatim into every exported folder as
``pipeline.py`` (and, for the interval embedder component, as ``interval_embedder/meanflow_pipeline.py``) and names
its classes in ``model_index.json``, so stock diffusers loads the folder with

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

(with or without T5 in the folder) and ``pipe(prompt, num_inference_steps=1)`` (or 2, 4, ...) samples. It
therefore imports only torch and diffusers.

The student predicts the average velocity ``u(z_t, r, t) = 1/(t - r) * integral_r^t v(z_s, s) ds`` of the flow
``z_t = (1 - t) x0 + t eps`` (Geng et al. 2025, "Mean Flows for One-step Generative Modeling", arXiv 2505.13447).
The network is the stock ``SD3Transformer2DModel`` fed ``timestep = 1000 t`` plus an ``IntervalEmbedder`` of
``h = t - r`` whose output is added to ``pooled_projections`` (SD3 adds the pooled text embedding to the timestep
embedding, so the interval reaches every block's modulation the way t does). The embedder is exactly zero at
``h = 0`` (features ``sin(w h)`` and ``1 - cos(w h)``, layers without bias), so ``u(z, t, t)`` is the
transformer's own instantaneous velocity. ``FlowMapEulerDiscreteScheduler`` steps ``z_r = z_t - (t - r) u`` on
the uniform grid 1 -> 0 (with its shift); during ``__call__`` ``self.transformer`` is an ``IntervalTransformer``
that reads each step's ``r`` from that grid.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    ConfigMixin,
    FlowMapEulerDiscreteScheduler,
    ModelMixin,
    StableDiffusion3Pipeline,
)
from diffusers.configuration_utils import register_to_config
from torch import nn

EMBEDDER_FOLDER = "interval_embedder"
EMBEDDER_MODULE = "meanflow_pipeline"
"""The copy of this file inside the embedder's folder (diffusers' form for a custom component's code)."""


class IntervalEmbedder(ModelMixin, ConfigMixin):
    """``h = t - r`` (flow time, in [0, 1]) to a vector added to the transformer's pooled projections.

    Sinusoidal features ``sin(w_k s h)`` and ``1 - cos(w_k s h)`` (``s = timestep_scale``, ``w_k`` the geometric
    frequencies of diffusers' timestep embedding) -> Linear -> SiLU -> Linear, no biases: zero at h = 0 for any
    weights; the last layer starts at zero, so an untrained embedder is zero everywhere."""

    @register_to_config
    def __init__(self, out_dim: int, frequency_dim: int = 256, hidden_dim: int = 256, timestep_scale: float = 1000.0,
                 max_period: float = 10000.0):
        super().__init__()
        self.linear_1 = nn.Linear(frequency_dim, hidden_dim, bias=False)
        self.linear_2 = nn.Linear(hidden_dim, out_dim, bias=False)
        nn.init.zeros_(self.linear_2.weight)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        half = self.config.frequency_dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=h.device) / half
        freqs = torch.exp(-math.log(self.config.max_period) * exponent)
        angle = (h.float() * self.config.timestep_scale)[:, None] * freqs[None]
        return torch.cat([torch.sin(angle), 1 - torch.cos(angle)], dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.features(h).to(self.linear_1.weight.dtype)
        return self.linear_2(nn.functional.silu(self.linear_1(x)))


def interval_velocity(transformer, embedder, hidden_states, timestep, r_timestep, encoder_hidden_states,
                      pooled_projections, num_train_timesteps: int = 1000, **kwargs) -> torch.Tensor:
    """The student's average velocity from ``r_timestep`` to ``timestep`` (both in scheduler units, ``1000 t``):
    the transformer at ``timestep`` with the embedding of ``h = (timestep - r_timestep) / num_train_timesteps``
    added to ``pooled_projections``. The one forward that training, gendistill's sampler and this pipeline share."""
    h = (timestep - r_timestep) / num_train_timesteps
    extra = embedder(h.flatten()).to(pooled_projections.dtype)
    return transformer(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                       pooled_projections=pooled_projections + extra, return_dict=False, **kwargs)[0]


def flow_map_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The flow times ``FlowMapEulerDiscreteScheduler`` visits for ``steps`` steps (float64, ends at 0)."""
    scheduler = FlowMapEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps, device="cpu")
    return scheduler.sigmas.clone()


def flow_map_step(sample: torch.Tensor, u: torch.Tensor, sigma_t: torch.Tensor, sigma_r: torch.Tensor) -> torch.Tensor:
    """``z_r = z_t - (t - r) u`` with the scheduler's arithmetic (float64 times, result in ``u``'s dtype)."""
    shape = (1,) * u.ndim
    return (sample - (sigma_t.view(shape) - sigma_r.view(shape)).to(sample.device) * u).to(u.dtype)


def flow_map_steps(velocity, noise: torch.Tensor, sigmas: torch.Tensor, num_train_timesteps: int = 1000):
    """Yield ``(i, z, u)`` after each jump ``z_r = z_t - (t - r) u`` over the flow times ``sigmas`` (float64, as
    ``flow_map_sigmas``), ``u = velocity(z, timestep, r_timestep)`` in scheduler units, as the pipeline calls it."""
    z = noise
    for i in range(len(sigmas) - 1):
        t = (sigmas[i] * num_train_timesteps).to(z.device).expand(z.shape[0])
        r = (sigmas[i + 1] * num_train_timesteps).to(z.device).expand(z.shape[0])
        u = velocity(z, t, r)
        z = flow_map_step(z, u, sigmas[i], sigmas[i + 1])
        yield i, z, u


class IntervalTransformer(nn.Module):
    """Stands in for ``pipe.transformer`` during sampling: each call is ``interval_velocity`` with ``r`` the next
    time on the scheduler's current grid; other attributes (``config``, ``dtype``, ...) are the transformer's."""

    def __init__(self, transformer, embedder, scheduler):
        super().__init__()
        self.transformer, self.embedder = transformer, embedder
        object.__setattr__(self, "scheduler", scheduler)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            transformer = self.__dict__.get("_modules", {}).get("transformer")
            if transformer is None:
                raise
            return getattr(transformer, name)

    def r_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        scheduler = self.scheduler
        index = scheduler.index_for_timestep(timestep)
        if index is None:
            raise ValueError(f"timestep {float(timestep.flatten()[0])} is not on the scheduler's grid")
        r = scheduler.sigmas[index + 1] * scheduler.config.num_train_timesteps
        return r.to(device=timestep.device, dtype=timestep.dtype).expand(timestep.shape)

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, pooled_projections=None, **kwargs):
        kwargs.pop("return_dict", None)
        out = interval_velocity(self.transformer, self.embedder, hidden_states, timestep, self.r_timestep(timestep),
                                encoder_hidden_states, pooled_projections,
                                self.scheduler.config.num_train_timesteps, **kwargs)
        return (out,)


def ship_code(pipe, save_directory) -> None:
    """Copy this file into the saved folder as ``pipeline.py`` and as the embedder's module, and name the classes
    in ``model_index.json`` (``["pipeline", class]``: diffusers' form for a pipeline class in the folder;
    ``[module, class]`` with ``<component>/<module>.py`` present: its form for a custom component)."""
    folder = Path(save_directory)
    source = Path(inspect.getsourcefile(type(pipe)))
    for target in (folder / "pipeline.py", folder / EMBEDDER_FOLDER / f"{EMBEDDER_MODULE}.py"):
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", type(pipe).__name__]
    index[EMBEDDER_FOLDER] = [EMBEDDER_MODULE, "IntervalEmbedder"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


class MeanFlowStableDiffusion3Pipeline(StableDiffusion3Pipeline):
    """``StableDiffusion3Pipeline`` whose transformer predicts average velocities (a MeanFlow student); samples
    at any step count with ``FlowMapEulerDiscreteScheduler``. Guidance is distilled in: ``guidance_scale``
    defaults to 1 (no CFG batch) and ``num_inference_steps`` to 1."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->interval_embedder->transformer->vae"
    _optional_components = [*StableDiffusion3Pipeline._optional_components, "text_encoder_3", "tokenizer_3"]
    """T5 is optional (diffusers' SD3 runs without it): a folder saved without it loads without naming it."""

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3, tokenizer_3, interval_embedder, image_encoder=None, feature_extractor=None):
        super().__init__(transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                         text_encoder_3, tokenizer_3, image_encoder, feature_extractor)
        self.register_modules(interval_embedder=interval_embedder)

    @contextmanager
    def _interval_transformer(self):
        """``self.transformer`` is an ``IntervalTransformer`` inside the block (set past
        ``DiffusionPipeline.__setattr__``, which would otherwise record the stand-in in the config)."""
        transformer = self.transformer
        object.__setattr__(self, "transformer", IntervalTransformer(transformer, self.interval_embedder,
                                                                    self.scheduler))
        try:
            yield
        finally:
            object.__setattr__(self, "transformer", transformer)

    def __call__(self, *args, **kwargs):
        kwargs.setdefault("num_inference_steps", 1)
        kwargs.setdefault("guidance_scale", 1.0)
        with self._interval_transformer():
            return super().__call__(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        ship_code(self, save_directory)
