"""The diffusion model as a zero-shot classifier: the candidate condition under which the model denoises the
input best is the one it believes.

Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier" (arXiv 2303.16203; code:
diffusion-classifier/diffusion-classifier): for each candidate condition ``c_k`` the expected denoising error
``E_{sigma, eps} ||eps_hat(x0 + sigma eps, sigma, c_k) - eps||^2`` approximates ``-ELBO(x0 | c_k)`` up to a
constant shared by all candidates, so its argmin is an approximate Bayes classifier. As in the paper every
candidate sees the same (sigma, eps) draws (paired errors: their difference has far less variance than either).

Canonical units: ``eps_hat - eps = (D(x, sigma) - x0) / sigma``, so the epsilon error is the x0 error over
``sigma^2``. Nothing here knows about text or images: a condition is whatever the denoiser takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gendistill.diffusion.denoiser import Denoiser, expand_sigma


@dataclass(frozen=True)
class NoiseDraws:
    """The (sigma, eps) pairs every candidate is scored on: ``sigmas`` (N,), ``noise`` (N, *sample shape)."""

    sigmas: Tensor
    noise: Tensor

    @staticmethod
    def stratified(train_sigmas: Tensor, draws: int, sample_shape: tuple[int, ...], generator: torch.Generator,
                   low: float = 0.0, high: float = 1.0) -> NoiseDraws:
        """``draws`` sigmas of the training timesteps, one from each of ``draws`` equal strata of the fraction
        range [low, high) (the paper spreads its timesteps evenly), and standard normal noise."""
        count = len(train_sigmas)
        edges = torch.linspace(low, high, draws + 1, dtype=torch.float64)
        u = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(draws, generator=generator, dtype=torch.float64)
        index = (u * count).long().clamp(0, count - 1)
        noise = torch.randn((draws, *sample_shape), generator=generator)
        return NoiseDraws(train_sigmas[index].float(), noise)


def denoising_errors(denoiser: Denoiser, x0: Tensor, candidates: list[Any], draws: NoiseDraws,
                     batch_condition: Callable[[Any, int], Any] | None = None) -> Tensor:
    """Mean epsilon-prediction error of each sample under each candidate condition, (B, K).

    ``x0`` is (B, ...); ``candidates`` are K conditions for one sample each, batched to B * N rows by
    ``batch_condition(cond, rows)`` (default: the condition's own ``repeat(rows)``, or the condition as is when
    it has none). Every sample and candidate is scored on the same ``draws``."""
    repeat = batch_condition or _repeat
    b, n = x0.shape[0], len(draws.sigmas)
    sigma = draws.sigmas.to(x0.device).repeat(b)  # row (i, j): sample i, draw j
    clean = x0.repeat_interleave(n, dim=0)
    x = clean + expand_sigma(sigma, clean) * draws.noise.to(x0).repeat(b, *([1] * (x0.ndim - 1)))
    errors = []
    with torch.no_grad():
        for cond in candidates:
            x0_hat = denoiser(x, sigma, repeat(cond, b * n))
            per_row = (x0_hat - clean).pow(2).mean(dim=list(range(1, x0.ndim))) / sigma.pow(2)
            errors.append(per_row.view(b, n).mean(dim=1))
    return torch.stack(errors, dim=1)


def _repeat(cond: Any, rows: int) -> Any:
    return cond.repeat(rows) if hasattr(cond, "repeat") and not isinstance(cond, Tensor) else cond
