"""Sampling schedules (frozen objects giving ``sigmas(n)``) and training-time sigma samplers.

Sigmas are float64 tensors in canonical units, decreasing, ending with the final sigma (usually 0).
The discrete schedules reproduce diffusers' own timestep spacings exactly, so a sampler driven by them
visits the same timesteps as the stock scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Spacing = Literal["leading", "trailing", "linspace"]
SPACINGS = ("leading", "trailing", "linspace")

# diffusers replaces a zero-terminal-SNR alpha-bar of exactly 0 by this, so the first sigma is finite.
ZERO_SNR_ALPHA_BAR = 2.0**-24
# Flow-matching schedules start at t = 1 (sigma = inf); we start at this sigma instead (t = 0.99999).
FLOW_SIGMA_CAP = 1e5


def vp_sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` per training timestep, float64, zero-SNR safe."""
    abar = alphas_cumprod.double().clamp(min=ZERO_SNR_ALPHA_BAR)
    return ((1 - abar) / abar).sqrt()


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """A VP model's own training timesteps, chosen with one of diffusers' spacings."""

    alphas_cumprod: Tensor
    """Cumulative alpha product per training timestep, (T,)."""
    spacing: Spacing = "leading"
    """How inference timesteps are picked among the T training timesteps."""
    steps_offset: int = 0
    """Added to every timestep with "leading" spacing (SD 1.x uses 1)."""
    final_sigma: float = 0.0
    """Sigma after the last step: 0, or the first timestep's sigma (DDIM's ``set_alpha_to_one=False``)."""

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def train_sigmas(self) -> Tensor:
        return vp_sigmas_from_alphas_cumprod(self.alphas_cumprod)

    def timesteps(self, n: int) -> np.ndarray:
        """The ``n`` inference timesteps, high to low, as diffusers' DDIM/Euler schedulers pick them."""
        T = self.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"steps must be in [1, {T}], got {n}")
        if self.spacing == "linspace":
            return np.linspace(0, T - 1, n)[::-1].copy()
        if self.spacing == "leading":
            return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float64) + self.steps_offset
        if self.spacing == "trailing":
            return np.round(np.arange(T, 0, -T / n)).astype(np.float64) - 1
        raise ValueError(f"unknown spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")

    def sigmas(self, n: int) -> Tensor:
        """Sigmas at the ``n`` timesteps (linearly interpolated at fractional ones), then the final sigma."""
        table = self.train_sigmas.numpy()
        at = np.interp(self.timesteps(n), np.arange(len(table)), table)
        return torch.from_numpy(np.append(at, self.final_sigma))


@dataclass(frozen=True)
class LCMSchedule:
    """The timesteps diffusers' LCMScheduler visits: ``n`` of an ``original_steps``-step trailing grid.

    Consistency and DMD students are trained on exactly these, and exported with an LCMScheduler whose
    ``original_inference_steps`` is the same, so stock diffusers samples them at the trained timesteps.
    """

    alphas_cumprod: Tensor
    """Cumulative alpha product per training timestep, (T,)."""
    original_steps: int = 50
    """Size of the grid the inference timesteps are taken from (LCM: 50; a 4-step DMD2 student: 4)."""

    def timesteps(self, n: int) -> np.ndarray:
        T = self.alphas_cumprod.shape[0]
        if not 1 <= n <= self.original_steps:
            raise ValueError(f"steps must be in [1, {self.original_steps}] for this student, got {n}")
        grid = (np.arange(1, self.original_steps + 1) * (T // self.original_steps) - 1)[::-1]
        return grid[np.floor(np.linspace(0, self.original_steps, n, endpoint=False)).astype(np.int64)]

    def sigmas(self, n: int) -> Tensor:
        table = vp_sigmas_from_alphas_cumprod(self.alphas_cumprod)
        return torch.cat([table[torch.from_numpy(self.timesteps(n).copy())], table.new_zeros(1)])


@dataclass(frozen=True)
class KarrasSchedule:
    """Karras et al. (2022) rho-spaced sigmas between ``sigma_min`` and ``sigma_max``, then 0."""

    sigma_min: float
    """Smallest nonzero sigma."""
    sigma_max: float
    """Largest sigma (the starting noise level)."""
    rho: float = 7.0
    """Spacing exponent; 7 puts more steps at low noise."""

    def sigmas(self, n: int) -> Tensor:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sig = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([sig, sig.new_zeros(1)])


@dataclass(frozen=True)
class FlowMatchSchedule:
    """Shifted flow-matching times as diffusers' FlowMatchEulerDiscreteScheduler picks them (SD3/FLUX).

    Flow time ``t`` maps to canonical ``sigma = t / (1 - t)``; t = 1 is capped at ``FLOW_SIGMA_CAP``.
    """

    shift: float = 1.0
    """Timestep shift: ``t -> shift * t / (1 + (shift - 1) * t)``."""
    num_train_timesteps: int = 1000
    """Training timesteps; the smallest flow time is about 1 / this."""

    def shifted(self, t: np.ndarray) -> np.ndarray:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def flow_times(self, n: int) -> np.ndarray:
        """The ``n`` flow times, high to low (diffusers shifts the stored minimum once more)."""
        t_min = self.shifted(np.float64(1 / self.num_train_timesteps))
        return self.shifted(np.linspace(1.0, t_min, n))

    def sigmas(self, n: int) -> Tensor:
        t = torch.from_numpy(self.flow_times(n))
        return torch.cat([flow_time_to_sigma(t), t.new_zeros(1)])


def flow_time_to_sigma(t: Tensor) -> Tensor:
    """Flow time in [0, 1] to canonical sigma, capped at ``FLOW_SIGMA_CAP``."""
    return (t / (1 - t).clamp(min=1 / (1 + FLOW_SIGMA_CAP))).clamp(max=FLOW_SIGMA_CAP)


def sigma_to_flow_time(sigma: Tensor) -> Tensor:
    return sigma / (1 + sigma)


# --- training-time sigma samplers ---------------------------------------------------------------


@dataclass(frozen=True)
class UniformTimestepSampler:
    """Uniform over a range of a discrete schedule's training timesteps (e.g. DMD's [20, 980])."""

    train_sigmas: Tensor
    """Sigma of each training timestep, (T,)."""
    t_min: int = 0
    """Smallest timestep drawn (inclusive)."""
    t_max: int | None = None
    """Largest timestep drawn (inclusive); None means T - 1."""

    def timesteps(self, n: int, generator: torch.Generator) -> Tensor:
        t_max = len(self.train_sigmas) - 1 if self.t_max is None else self.t_max
        return torch.randint(self.t_min, t_max + 1, (n,), generator=generator)

    def __call__(self, n: int, generator: torch.Generator) -> Tensor:
        return self.train_sigmas[self.timesteps(n, generator)]


@dataclass(frozen=True)
class LogUniformSigmaSampler:
    """``log sigma`` uniform in ``[log sigma_min, log sigma_max]``."""

    sigma_min: float
    """Lower end of the range."""
    sigma_max: float
    """Upper end of the range."""

    def __call__(self, n: int, generator: torch.Generator) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + u * (hi - lo)).exp()


@dataclass(frozen=True)
class LogNormalSigmaSampler:
    """EDM's training distribution: ``log sigma ~ N(p_mean, p_std^2)``."""

    p_mean: float = -1.2
    """Mean of log sigma."""
    p_std: float = 1.2
    """Standard deviation of log sigma."""

    def __call__(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.p_mean + self.p_std * z).exp()
