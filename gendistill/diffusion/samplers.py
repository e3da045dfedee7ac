"""Samplers: plain generator functions that yield every step.

Each sampler takes a denoiser, the starting ``x`` (already scaled to ``sigmas[0]``), the decreasing
``sigmas`` (ending at the final sigma, usually 0) and a condition, and yields a ``SamplerStep`` after each
step. Progress bars, callbacks and the demo's streaming all read that stream; ``final_sample`` drains it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from gendistill.diffusion.denoiser import Denoiser, expand_sigma


@dataclass(frozen=True)
class SamplerStep:
    """One finished step: ``x`` is the new state at noise level ``sigma``; ``denoised`` the x0 estimate used."""

    index: int
    x: Tensor
    sigma: float
    denoised: Tensor


Sampler = Callable[..., Iterator[SamplerStep]]


def final_sample(steps: Iterator[SamplerStep]) -> Tensor:
    """Run a sampler to the end and return its last state."""
    last = None
    for last in steps:
        pass
    if last is None:
        raise ValueError("the sampler ran no step (sigmas needs at least two entries)")
    return last.x


def _noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Noise drawn on the generator's device, then moved (as diffusers' randn_tensor does, so a CPU
    generator gives the same numbers whatever device the latents are on)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


def _pairs(sigmas: Tensor):
    values = [float(s) for s in sigmas]
    return list(enumerate(zip(values[:-1], values[1:])))


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """Split a step to ``sigma_next`` into a deterministic part down to ``sigma_down`` plus fresh noise
    ``sigma_up`` (``sigma_down^2 + sigma_up^2 = sigma_next^2``). eta = 1 is DDPM-like; this is DDIM's eta."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


StepGuide = Callable[[int, Tensor, float], Tensor]
"""``guide(index, x, sigma_next) -> x``: the state after step ``index``, at ``sigma_next``, moved (a fixed
computation on the state, e.g. Attention Distillation's normalised gradient steps; not an optimiser loop)."""


def sample_euler(denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond=None, *, eta: float = 0.0,
                 generator: torch.Generator | None = None, guide: StepGuide | None = None) -> Iterator[SamplerStep]:
    """Euler on the probability-flow ODE, which is DDIM; with ``eta > 0`` it is stochastic DDIM.

    Fresh noise is drawn at every step when ``eta > 0`` (the last included), as diffusers' DDIM does, so
    the same generator gives the same images. ``guide``, when given, moves the state after every step
    (classifier-guidance-like methods: Attention Distillation's "improved classifier guidance").
    """
    for i, (sigma, sigma_next) in _pairs(sigmas):
        denoised = denoiser(x, x.new_tensor(sigma), cond)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        x = denoised + (x - denoised) * (sigma_down / sigma)
        if eta > 0:
            x = x + sigma_up * _noise_like(x, generator)
        if guide is not None:
            x = guide(i, x, sigma_next)
        yield SamplerStep(i, x, sigma_next, denoised)


def ddim_step(denoiser: Denoiser, x: Tensor, sigma, sigma_next, cond=None) -> Tensor:
    """One deterministic DDIM (= Euler) step with per-sample sigmas (scalars or (B,)):
    ``x0_hat + (x - x0_hat) * sigma_next / sigma``, the update ``sample_euler`` makes with eta = 0.
    Recipes use it for teacher solves where each sample sits at its own noise level."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    x0 = denoiser(x, sigma, cond)
    ratio = expand_sigma(torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device), x) / expand_sigma(sigma, x)
    return x0 + (x - x0) * ratio


def sample_heun(denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond=None, *,
                generator: torch.Generator | None = None) -> Iterator[SamplerStep]:
    """Heun's second-order method (EDM, Karras et al. 2022, Algorithm 1); Euler on the step to 0."""
    for i, (sigma, sigma_next) in _pairs(sigmas):
        denoised = denoiser(x, x.new_tensor(sigma), cond)
        d = (x - denoised) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, x.new_tensor(sigma_next), cond)) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        yield SamplerStep(i, x, sigma_next, denoised)


def sample_dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond=None, *,
                    generator: torch.Generator | None = None) -> Iterator[SamplerStep]:
    """DPM-Solver++(2M) (Lu et al. 2022): second order from the previous step's x0, one call per step."""
    previous = None  # (denoised, sigma) of the last step
    for i, (sigma, sigma_next) in _pairs(sigmas):
        denoised = denoiser(x, x.new_tensor(sigma), cond)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            target = denoised
            if previous is not None:
                r = math.log(previous[1] / sigma) / h
                target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous[0]
            x = (sigma_next / sigma) * x - math.expm1(-h) * target
        previous = (denoised, sigma)
        yield SamplerStep(i, x, sigma_next, denoised)


def sample_consistency(denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond=None, *,
                       generator: torch.Generator | None = None) -> Iterator[SamplerStep]:
    """Multistep consistency sampling (LCM, DMD students): denoise, then re-noise to the next sigma."""
    for i, (sigma, sigma_next) in _pairs(sigmas):
        denoised = denoiser(x, x.new_tensor(sigma), cond)
        x = denoised if sigma_next == 0 else denoised + sigma_next * _noise_like(denoised, generator)
        yield SamplerStep(i, x, sigma_next, denoised)


SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "ddim": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "consistency": sample_consistency,
}
"""Samplers by CLI name. "ddim" and "euler" share the update; they differ in how the start is scaled."""

STOCHASTIC = ("euler", "ddim")
"""Samplers that accept ``eta``."""


@dataclass(frozen=True)
class HybridStage:
    """One stage of a hybrid run: this sampler and denoiser over these sigmas."""

    sampler: Sampler
    denoiser: Denoiser
    sigmas: Tensor
    options: dict = field(default_factory=dict)


def sample_hybrid(stages: list[HybridStage], x: Tensor, cond=None, *,
                  generator: torch.Generator | None = None) -> Iterator[SamplerStep]:
    """Run stages back to back, each starting where the last ended ("diversity distillation": a base
    model lays out the composition in the first steps, a distilled model finishes)."""
    offset = 0
    for stage in stages:
        for step in stage.sampler(stage.denoiser, x, stage.sigmas, cond, generator=generator, **stage.options):
            x = step.x
            yield replace(step, index=step.index + offset)
        offset += len(stage.sigmas) - 1


def split_for_hybrid(sigmas: Tensor, base_steps: int) -> tuple[Tensor, Tensor]:
    """Split one schedule into the base model's first ``base_steps`` steps and the rest."""
    if not 0 <= base_steps < len(sigmas) - 1:
        raise ValueError(f"base_steps must be in [0, {len(sigmas) - 2}], got {base_steps}")
    return sigmas[: base_steps + 1], sigmas[base_steps:]


NOISE_SCALINGS = ("vp", "ve", "flow")


def initial_scale(sigma_max: float, kind: str = "vp") -> float:
    """Std of the starting noise in canonical units: ``sqrt(1 + sigma^2)`` for VP models (exactly DDIM's
    start), ``1 + sigma`` for flow models (their start is pure noise), or plain ``sigma`` ("ve": EDM, and
    diffusers' Euler with linspace or trailing spacing)."""
    if kind == "vp":
        return math.sqrt(1 + sigma_max**2)
    if kind == "flow":
        return 1 + sigma_max
    if kind == "ve":
        return sigma_max
    raise ValueError(f"unknown noise scaling {kind!r}; choose one of {', '.join(NOISE_SCALINGS)}")
