"""DDIM with a guidance hook between steps: classifier-guidance-like methods that move the state after each
update (Attention Distillation's "improved classifier guidance", ``score/attention_guide.py``).

``sample_ddim_guided`` makes exactly ``sample_euler``'s deterministic (eta = 0) update, then hands the new state
to ``guide(index, x, sigma_next)`` and continues from what it returns; without a guide it is ``sample_euler``.
The guide is a fixed computation on the state (a few normalised gradient steps, say), not an optimiser loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from gendistill.diffusion.denoiser import Denoiser
from gendistill.diffusion.samplers import SamplerStep

StepGuide = Callable[[int, Tensor, float], Tensor]
"""``guide(index, x, sigma_next) -> x``: the state after step ``index``, at ``sigma_next``, moved."""


def sample_ddim_guided(denoiser: Denoiser, x: Tensor, sigmas: Tensor, cond=None, *, guide: StepGuide | None = None,
                       generator: torch.Generator | None = None) -> Iterator[SamplerStep]:
    """Deterministic DDIM (Euler on the probability-flow ODE) with ``guide`` applied after every step."""
    values = [float(s) for s in sigmas]
    for i, (sigma, sigma_next) in enumerate(zip(values[:-1], values[1:])):
        denoised = denoiser(x, x.new_tensor(sigma), cond)
        x = denoised + (x - denoised) * (sigma_next / sigma)
        if guide is not None:
            x = guide(i, x, sigma_next)
        yield SamplerStep(i, x, sigma_next, denoised)
