"""Run any diffusers scheduler's own loop over gendistill's canonical denoiser (issue 12, item 1).

diffusers' scheduler API (``diffusers.SchedulerMixin``; e.g. ``DDIMScheduler``, ``EulerDiscreteScheduler``,
``DPMSolverMultistepScheduler``, ``FlowMatchEulerDiscreteScheduler``):

- ``set_timesteps(num_inference_steps, device=...)`` fills ``scheduler.timesteps`` (one entry per network
  evaluation: Heun's and KDPM2's interleave their second-order points) and sets ``init_noise_sigma``;
- ``scale_model_input(sample, t)`` turns the scheduler's state into what the network sees (identity for
  VP-space schedulers such as DDIM, PNDM, DPM-Solver, UniPC; ``/ sqrt(sigma^2 + 1)`` for Euler, Heun, LMS...);
- ``step(model_output, t, sample, generator=..., eta=...)`` takes the network's output *in the scheduler's
  ``config.prediction_type``* ("epsilon", "v_prediction", "sample"; flow-matching schedulers: the velocity
  ``eps - x0``) and returns ``prev_sample``.

The driver keeps diffusers' loop as it is (so parity with stock pipelines holds by construction, and schedulers
added to diffusers later work unchanged) and replaces only the network call: the network input is mapped to
canonical units (``x = x0 + sigma * eps``, DESIGN.md §2), the canonical denoiser (with CFG and guidance rescale
wrappers) gives x0, and x0 is mapped back to the scheduler's prediction type at the same sigma. The map uses
the sigma that the denoiser's own adapter assigns to the timestep ``t`` (VP: the training sigma table linearly
interpolated at ``t``, as ``adapters.SigmaToTimestep`` inverts it; flow: ``s = t / T``, ``sigma = s / (1 - s)``),
so the network sees exactly the scheduler's input and timestep and the round trip is exact up to rounding.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gendistill.diffusion.adapters import flow_velocity_from_x0, vp_output_from_x0
from gendistill.diffusion.denoiser import Denoiser
from gendistill.diffusion.samplers import SamplerStep
from gendistill.errors import UserError


@dataclass(frozen=True)
class SchedulerStep(SamplerStep):
    """A ``SamplerStep`` (``x`` canonical at ``sigma``, the noise level of the next network evaluation; 0 after
    the last step) plus ``latents``: the scheduler's own state, what the stock pipeline would decode at the end."""

    latents: Tensor | None = None


PURE_NOISE_FLOW_SIGMA = 1e8
"""Flow time 1 (pure noise) is sigma = inf; at this sigma the flow time ``sigma / (1 + sigma)`` rounds to 1 in
the float32 timestep the transformer sees, and the driver's float64 maps lose nothing (see ``_drive``)."""


@dataclass(frozen=True)
class TimestepUnits:
    """Maps a scheduler timestep to the canonical sigma the model's denoiser assigns to it, and a network input
    at that timestep to canonical ``x`` (and back). ``family`` is "vp" or "flow" (``TextToImageModel.family``)."""

    family: str
    train_sigmas: Tensor | None = None  # VP: sigma of each training timestep (float64)
    num_train_timesteps: int = 1000  # flow: timestep = flow time * T

    def sigma(self, t: Tensor) -> float:
        t = float(t)
        if self.family == "flow":
            s = t / self.num_train_timesteps
            return s / (1 - s) if s < 1 else PURE_NOISE_FLOW_SIGMA
        table = self.train_sigmas.double().cpu().numpy()
        return float(np.interp(t, np.arange(len(table), dtype=np.float64), table))

    def to_canonical(self, model_input: Tensor, sigma: float) -> Tensor:
        return model_input * ((1 + sigma) if self.family == "flow" else (1 + sigma**2) ** 0.5)

    def model_output(self, x0: Tensor, x: Tensor, sigma: float, prediction: str) -> Tensor:
        """x0 as the network of the scheduler's ``prediction`` type would have output it at canonical ``x``."""
        sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if self.family == "flow":
            return flow_velocity_from_x0(x0, x, sig)
        return vp_output_from_x0(x0, x, sig, prediction)

    @staticmethod
    def of(model) -> TimestepUnits:
        """The units of a ``TextToImageModel``."""
        if model.family == "flow":
            return TimestepUnits("flow", None, model.num_train_timesteps)
        return TimestepUnits("vp", model.train_sigmas)


def fresh_scheduler(scheduler):
    """A new scheduler of the same class and config (``SchedulerMixin.from_config``), so that running the
    driver never changes the state (step index, multistep history) of the pipeline's own scheduler."""
    return type(scheduler).from_config(scheduler.config)


def _step_kwargs(scheduler, generator: torch.Generator | None, eta: float) -> dict:
    """What diffusers pipelines pass to ``step`` (``prepare_extra_step_kwargs``): ``eta`` and ``generator``
    only where the scheduler's ``step`` accepts them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def initial_latents(scheduler, noise: Tensor) -> Tensor:
    """The pipelines' ``prepare_latents``: unit noise times ``scheduler.init_noise_sigma`` (after set_timesteps)."""
    return noise * getattr(scheduler, "init_noise_sigma", 1.0)


def set_timesteps(scheduler, steps: int, latents_shape: tuple[int, ...], device, patch_size: int = 1) -> None:
    """``set_timesteps`` as the pipelines call it; flow schedulers with ``use_dynamic_shifting`` also get the
    shift ``mu`` that SD3's pipeline derives from the image's token count (``calculate_shift``)."""
    config = scheduler.config
    if not config.get("use_dynamic_shifting", False):
        scheduler.set_timesteps(steps, device=device)
        return
    tokens = (latents_shape[-2] // patch_size) * (latents_shape[-1] // patch_size)
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.16)
    mu = low + (high - low) / (top - base) * (tokens - base)
    scheduler.set_timesteps(steps, device=device, mu=mu)


def sample_with_scheduler(scheduler, denoiser: Denoiser, noise: Tensor, cond, steps: int, units: TimestepUnits,
                          generator: torch.Generator | None = None, eta: float = 0.0,
                          patch_size: int = 1) -> Iterator[SchedulerStep]:
    """Run ``scheduler`` (used as is: pass ``fresh_scheduler(...)`` to keep a pipeline's untouched) for
    ``steps`` inference steps from unit ``noise`` (as drawn by the pipeline: ``randn`` of the latent shape from
    ``generator``), calling ``denoiser(x, sigma, cond) -> x0`` once per ``scheduler.timesteps`` entry; yields a
    ``SchedulerStep`` per entry. ``generator`` feeds stochastic schedulers' ``step`` (Euler ancestral,
    DPM-Solver SDE, DDIM with ``eta``), so a seed gives diffusers' noise stream.

    The timesteps are set when this is called (``len(scheduler.timesteps)`` is then the stream's length); the
    network runs as the stream is read."""
    try:
        set_timesteps(scheduler, steps, tuple(noise.shape), noise.device, patch_size)
    except ValueError as err:  # e.g. an LCMScheduler asked for more steps than its original_inference_steps
        raise UserError(f"{type(scheduler).__name__} cannot take {steps} steps for this model: {err}") from err
    return _drive(scheduler, denoiser, initial_latents(scheduler, noise), cond, units,
                  _step_kwargs(scheduler, generator, eta))


def _drive(scheduler, denoiser: Denoiser, latents: Tensor, cond, units: TimestepUnits,
           kwargs: dict) -> Iterator[SchedulerStep]:
    prediction = scheduler.config.get("prediction_type", "epsilon")
    timesteps = list(scheduler.timesteps)
    scale = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    model_input = scale(latents, timesteps[0])
    for i, t in enumerate(timesteps):
        # float64 for the maps to canonical units and back: the network then sees exactly the scheduler's input,
        # and its output comes back to the scheduler within one rounding (float32 would lose digits to the
        # x0 - sigma * eps cancellation at high noise, measured 2e-4 on Heun's latents of magnitude 60)
        sigma = units.sigma(t)
        x = units.to_canonical(model_input.to(_exact_dtype(model_input)), sigma)
        x0 = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), cond)
        output = units.model_output(x0, x, sigma, prediction).to(latents.dtype)
        try:
            latents = scheduler.step(output, t, latents, return_dict=False, **kwargs)[0]
        except IndexError as err:  # diffusers' own failure, which the stock pipeline hits too
            raise UserError(
                f"{type(scheduler).__name__} could not take step {i + 1} of {len(timesteps)} ({err}): diffusers' "
                "multistep schedulers fail so when timesteps repeat, as Karras sigmas on a zero-terminal-SNR "
                "model do; use fewer steps or no --karras") from err
        if i + 1 < len(timesteps):
            model_input = scale(latents, timesteps[i + 1])
            next_sigma = units.sigma(timesteps[i + 1])
            x_next = units.to_canonical(model_input, next_sigma)
            yield SchedulerStep(i, x_next, next_sigma, x0.to(latents.dtype), latents)
        else:
            yield SchedulerStep(i, latents, 0.0, x0.to(latents.dtype), latents)


def _exact_dtype(t: Tensor) -> torch.dtype:
    """float64, except on Apple's MPS, which has none."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def final_latents(steps: Iterator[SchedulerStep]) -> Tensor:
    """Drain the stream; the scheduler's final state (the pipeline's ``output_type="latent"`` result)."""
    last = None
    for last in steps:
        pass
    if last is None:
        raise ValueError("the scheduler ran no step")
    return last.latents
