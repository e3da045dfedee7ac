"""Losses in canonical units, shared by step distillation and score distillation.

The distribution-matching gradient (DESIGN.md §2): for a generator sample ``x0`` noised to
``x = x0 + sigma * eps``, the KL gradient that moves the generator's distribution toward the real one is
``grad = w * (D_fake(x) - D_real(x))`` in x0 units (the score difference ``s_fake - s_real`` times
``sigma^2``). SDS replaces ``D_fake(x)`` by ``x0`` itself (the injected noise as the fake score); VSD and
DMD train ``D_fake``. ``surrogate_loss`` turns any such gradient into a loss whose gradient it is.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from gendistill.diffusion.denoiser import expand_sigma

Weighting = Literal["dmd", "sds", "none"]


def dm_gradient(x0: Tensor, real_x0: Tensor, fake_x0: Tensor, sigma: Tensor | None = None,
                weighting: Weighting = "dmd", eps: float = 1e-8) -> Tensor:
    """``w * (fake_x0 - real_x0)`` per sample, with the weighting:

    - "dmd": DMD's normaliser ``1 / mean|x0 - real_x0|`` per sample (Yin et al. 2024, eq. 8);
    - "sds": DreamFusion's ``eps_hat - eps`` (its ``w(t)`` is the caller's to apply), which in x0 units
      is the difference divided by ``sigma``;
    - "none": the raw difference.
    All are detached: the result is a direction to feed to ``surrogate_loss``.
    """
    diff = (fake_x0 - real_x0).detach()
    if weighting == "none":
        return diff
    if weighting == "dmd":
        dims = list(range(1, x0.ndim))
        scale = (x0.detach() - real_x0.detach()).abs().mean(dim=dims, keepdim=True)
        return diff / (scale + eps)
    if weighting == "sds":
        if sigma is None:
            raise ValueError("sds weighting needs sigma")
        return diff / expand_sigma(sigma, x0)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of dmd, sds, none")


def surrogate_loss(x: Tensor, grad: Tensor, reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """``0.5 * ||x - stopgrad(x - grad)||^2``: its gradient with respect to ``x`` is ``grad`` (summed over
    elements for "sum"; divided by the batch size for "mean", so the batch size does not scale the step)."""
    target = (x - grad).detach()
    total = 0.5 * (x - target).pow(2).sum()
    return total / x.shape[0] if reduction == "mean" else total


def denoising_loss(denoiser, x0: Tensor, sigma: Tensor, noise: Tensor, cond=None,
                   weighting: Literal["x0", "eps", "v", "min_snr"] = "v", snr_gamma: float = 5.0) -> Tensor:
    """Weighted ``||D(x0 + sigma * eps) - x0||^2``, per sample mean then batch mean.

    The weight picks which parameterisation's loss this equals: "x0" (1), "eps" (``1/sigma^2``), "v"
    (``(1 + sigma^2)/sigma^2``, VP v-prediction), or "min_snr" (Hang et al. 2023; in x0 units it is
    ``min(snr, gamma)`` with ``snr = 1/sigma^2``, for eps- and v-prediction alike).
    """
    sig = expand_sigma(sigma, x0)
    x0_hat = denoiser(x0 + sig * noise, sigma, cond)
    return weighted_mse(x0_hat, x0, loss_weights(expand_sigma(sigma, x0).flatten(), weighting, snr_gamma))


def loss_weights(sigma: Tensor, weighting: Literal["x0", "eps", "v", "min_snr"] = "v",
                 snr_gamma: float = 5.0) -> Tensor:
    """Per-sample weights of an x0-units squared error that make it another parameterisation's loss (see
    ``denoising_loss``); ``sigma`` is (B,)."""
    s2 = sigma.pow(2)
    weights = {
        "x0": lambda: torch.ones_like(s2),
        "eps": lambda: 1 / s2,
        "v": lambda: (1 + s2) / s2,
        "min_snr": lambda: (1 / s2).clamp(max=snr_gamma),
    }
    if weighting not in weights:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(weights)}")
    return weights[weighting]()


def weighted_mse(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """``mean_b weights_b * mean(|prediction_b - target_b|^2)``."""
    per_sample = (prediction - target).pow(2).mean(dim=list(range(1, prediction.ndim)))
    return (weights * per_sample).mean()
