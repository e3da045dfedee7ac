"""Score matching within a subinterval (Phased DMD, Fan et al. 2025, arXiv 2510.27684, §"score matching within
subintervals"), and a denoiser made of experts that switch by sigma.

A phase of a few-step generator ends at ``sigma_s > 0``: its samples ``x_s`` are not clean data, so a fake score
cannot be trained on them with the usual ``x0`` target. In canonical units the forward process from ``sigma_s`` to
``sigma_t > sigma_s`` is a pure addition of noise (the VP/flow rescaling is already divided out):

    x_t = x_s + d * eps,   d = sqrt(sigma_t^2 - sigma_s^2).

The marginal score at ``sigma_t`` is the posterior mean of the transition's score,
``grad log p_t(x_t) = E[-(x_t - x_s) / d^2 | x_t]``, and a denoiser is ``D(x_t) = x_t + sigma_t^2 grad log p_t``.
So regressing ``D`` on

    target = x_t - sigma_t^2 * eps / d = x_s - (sigma_s^2 / d) * eps

has the minimiser ``E[target | x_t] = (sigma_t^2 E[x_s | x_t] - sigma_s^2 x_t) / (sigma_t^2 - sigma_s^2)``, which is
exactly ``E[x0 | x_t]`` for the distribution ``x_s`` came from (Tweedie's formula at ``sigma_t``), although no
``x0`` is ever seen. In epsilon units the target is ``eps * sigma_t / d``; at ``sigma_s = 0`` both reduce to the
usual denoising targets (``x_s`` and ``eps``). The paper writes the same target for flow matching
(``x_t = alpha x_s + beta eps`` with ``alpha = (1 - t) / (1 - s)``); LightX2V's ``phased_dmd/math.py`` has its
velocity form, which maps to the one above under ``sigma = t / (1 - t)``, ``x = x_flow / (1 - t)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from gendistill.diffusion.denoiser import TextCondition, expand_sigma


def subinterval_gap(sigma_s: Tensor, sigma_t: Tensor) -> Tensor:
    """``sqrt(sigma_t^2 - sigma_s^2)``, the std of the noise added from ``sigma_s`` to ``sigma_t``."""
    if torch.any(sigma_t <= sigma_s):
        raise ValueError("every sigma_t must be above its sigma_s (the subinterval transition adds noise)")
    return (sigma_t.double() ** 2 - sigma_s.double() ** 2).sqrt().to(sigma_t.dtype)


def subinterval_noised(x_s: Tensor, sigma_s: Tensor, sigma_t: Tensor, noise: Tensor) -> Tensor:
    """``x_t = x_s + sqrt(sigma_t^2 - sigma_s^2) * noise`` (scalar or per-row sigmas)."""
    return x_s + expand_sigma(subinterval_gap(sigma_s, sigma_t), x_s) * noise


def subinterval_x0_target(x_s: Tensor, sigma_s: Tensor, sigma_t: Tensor, noise: Tensor) -> Tensor:
    """The denoiser's regression target for ``x_t = subinterval_noised(x_s, ...)``: ``x_s - sigma_s^2 / d * noise``
    (its conditional mean given ``x_t`` is ``E[x0 | x_t]``; see the module docstring)."""
    gap = expand_sigma(subinterval_gap(sigma_s, sigma_t), x_s)
    return x_s - expand_sigma(sigma_s, x_s) ** 2 / gap * noise


def subinterval_denoising_loss(denoiser, x_s: Tensor, sigma_s: Tensor, sigma_t: Tensor, noise: Tensor, cond=None,
                               weighting: Literal["x0", "eps"] = "eps") -> Tensor:
    """Weighted ``||D(x_t, sigma_t) - target||^2`` (per-sample mean, then batch mean); "eps" weighs by
    ``1 / sigma_t^2``, the epsilon-MSE. With ``sigma_s = 0`` it is ``losses.denoising_loss``."""
    x_t = subinterval_noised(x_s, sigma_s, sigma_t, noise)
    target = subinterval_x0_target(x_s, sigma_s, sigma_t, noise)
    per_sample = (denoiser(x_t, sigma_t, cond) - target).pow(2).mean(dim=list(range(1, x_s.ndim)))
    if weighting == "x0":
        return per_sample.mean()
    if weighting == "eps":
        return (per_sample / expand_sigma(sigma_t, x_s).flatten() ** 2).mean()
    raise ValueError(f"unknown weighting {weighting!r}; choose x0 or eps")


# --- experts that switch by sigma -----------------------------------------------------------------


class SigmaSwitchDenoiser(nn.Module):
    """Denoisers by noise level: ``experts[k + 1]`` takes every row with ``sigma <= thresholds[k]`` (thresholds
    decreasing), ``experts[0]`` the rest. Rows at different levels are split among their experts."""

    def __init__(self, experts: list, thresholds: list[float]):
        super().__init__()
        if len(experts) != len(thresholds) + 1 or list(thresholds) != sorted(thresholds, reverse=True):
            raise ValueError("need one expert more than thresholds, and decreasing thresholds")
        self.experts = experts  # a plain list: wrapped denoisers, not modules this one owns
        self.thresholds = [float(t) for t in thresholds]

    def expert_index(self, sigma: Tensor) -> Tensor:
        """Per-row index of the expert that denoises at ``sigma``."""
        sigma = sigma.detach().double().flatten().cpu()
        return sum((sigma <= t).long() for t in self.thresholds)

    def forward(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        per_row = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        index = self.expert_index(per_row)
        if bool((index == index[0]).all()):
            return self.experts[int(index[0])](x, sigma, cond)
        out = torch.empty_like(x)
        for k in index.unique().tolist():
            rows = (index == k).nonzero().flatten().to(x.device)
            out[rows] = self.experts[k](x[rows], per_row[rows], None if cond is None else cond.take(rows))
        return out
