"""Which training timesteps a distribution-matching gradient is taken at: one unit, one type.

Every range is given in **fractions of T**, the model's number of training timesteps (DreamFusion's 0.02-0.98
is ``TimestepRange(0.02, 0.98)``, DMD2's [20, 980] of 1000 is the same range); fraction ``f`` is timestep
``round(f * T)``, clamped to ``[0, T - 1]``, so a range means the same on a 1000-step and a 100-step model.

``TimestepRange`` is what both families use: DMD's DM gradient and GAN inputs, and score distillation's
default. Score distillation may also anneal the range over training (``AnnealedMax``) or walk one timestep
down (``Decreasing``); ``TimestepPolicy`` is any of the three (a config field of that type picks one with
``kind:``). ``step`` is 0-based: ``step = 0`` is the start of training and ``step = total_steps - 1`` its end,
where every annealed value reaches its final value.

Each policy gives ``timesteps(step, total_steps, n, generator, num_train_timesteps)`` (indices) and
``sample(step, total_steps, n, generator, train_sigmas)`` (the sigmas at those indices). The sigma table is an
argument rather than a field so that a policy is plain config data, independent of the model. Checks run at
config load (``check(path)``), not on construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Union

import torch
from torch import Tensor

from gendistill.diffusion.ramps import progress
from gendistill.errors import check_choice, check_range


def timestep_index(fraction: float, num_train_timesteps: int) -> int:
    """Fraction of T to a training timestep index in ``[0, T - 1]`` (0.98 of 1000 is 980, as threestudio)."""
    return min(num_train_timesteps - 1, max(0, round(fraction * num_train_timesteps)))


def uniform_indices(lo: int, hi: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` timestep indices uniform in ``[lo, hi]`` (inclusive), drawn on the generator's device, on the CPU."""
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=generator.device).cpu()


def _check_fractions(path: str, **fractions: float) -> None:
    for name, value in fractions.items():
        check_range(f"{path}.{name}", value, 0.0, 1.0)


@dataclass(frozen=True)
class TimestepRange:
    """Timesteps uniform in ``[t_min, t_max]`` (fractions of T) at every step (DreamFusion, DMD)."""

    KIND: ClassVar[str] = "range"

    t_min: float = 0.02
    """Smallest timestep, as a fraction of T (inclusive)."""
    t_max: float = 0.98
    """Largest timestep, as a fraction of T (inclusive)."""

    def check(self, path: str) -> None:
        """UserErrors naming ``path.t_min`` / ``path.t_max`` unless ``0 <= t_min <= t_max <= 1``."""
        _check_fractions(path, t_min=self.t_min, t_max=self.t_max)
        check_range(f"{path}.t_max", self.t_max, self.t_min, 1.0)

    def indices(self, num_train_timesteps: int) -> tuple[int, int]:
        """The range as inclusive timestep indices of a T-step model."""
        T = num_train_timesteps
        return timestep_index(self.t_min, T), timestep_index(self.t_max, T)

    def timesteps(self, step: int, total_steps: int, n: int, generator: torch.Generator,
                  num_train_timesteps: int) -> Tensor:
        return uniform_indices(*self.indices(num_train_timesteps), n, generator)

    def sample(self, step: int, total_steps: int, n: int, generator: torch.Generator, train_sigmas: Tensor) -> Tensor:
        return train_sigmas[self.timesteps(step, total_steps, n, generator, len(train_sigmas))]


@dataclass(frozen=True)
class AnnealedMax:
    """Uniform in ``[t_min, t_max(step)]``, the upper end moving linearly from ``t_max_start`` to
    ``t_max_end`` over training (ProlificDreamer and HumanGaussian lower it from 0.98 to 0.5)."""

    KIND: ClassVar[str] = "annealed_max"

    t_min: float = 0.02
    """Smallest timestep, as a fraction of T (inclusive)."""
    t_max_start: float = 0.98
    """Upper end at the first step, as a fraction of T."""
    t_max_end: float = 0.5
    """Upper end at the last step, as a fraction of T (at least ``t_min``)."""

    def check(self, path: str) -> None:
        _check_fractions(path, t_min=self.t_min, t_max_start=self.t_max_start, t_max_end=self.t_max_end)
        check_range(f"{path}.t_max_start", self.t_max_start, self.t_min, 1.0)
        check_range(f"{path}.t_max_end", self.t_max_end, self.t_min, 1.0)

    def t_max(self, step: int, total_steps: int) -> float:
        """The upper end (a fraction of T) at ``step``."""
        return self.t_max_start + (self.t_max_end - self.t_max_start) * progress(step, total_steps)

    def timesteps(self, step: int, total_steps: int, n: int, generator: torch.Generator,
                  num_train_timesteps: int) -> Tensor:
        T = num_train_timesteps
        hi = timestep_index(self.t_max(step, total_steps), T)
        return uniform_indices(timestep_index(self.t_min, T), hi, n, generator)

    def sample(self, step: int, total_steps: int, n: int, generator: torch.Generator, train_sigmas: Tensor) -> Tensor:
        return train_sigmas[self.timesteps(step, total_steps, n, generator, len(train_sigmas))]


@dataclass(frozen=True)
class Decreasing:
    """A deterministic timestep that decreases from ``t_start`` to ``t_end`` over training: "linear" in the
    step, or "sqrt" (HiFA, Zhu et al. 2023: ``t = t_start - (t_start - t_end) sqrt(step / total)``), the
    monotone schedule DreamTime (Huang et al. 2023) argues for; plus optional uniform jitter."""

    KIND: ClassVar[str] = "decreasing"

    t_start: float = 0.98
    """Timestep at the first step, as a fraction of T."""
    t_end: float = 0.02
    """Timestep at the last step, as a fraction of T (at most ``t_start``)."""
    shape: Literal["linear", "sqrt"] = "sqrt"
    """How the timestep falls with the training progress p: ``p`` or ``sqrt(p)``."""
    jitter: float = 0.0
    """Half-width of uniform noise added to the timestep (fraction of T), clamped to [t_end, t_start]."""

    def check(self, path: str) -> None:
        _check_fractions(path, t_start=self.t_start, t_end=self.t_end, jitter=self.jitter)
        check_range(f"{path}.t_end", self.t_end, 0.0, self.t_start)
        check_choice(f"{path}.shape", self.shape, ("linear", "sqrt"))

    def fraction(self, step: int, total_steps: int) -> float:
        """The timestep (a fraction of T) at ``step``, before jitter."""
        p = progress(step, total_steps)
        return self.t_start - (self.t_start - self.t_end) * (p**0.5 if self.shape == "sqrt" else p)

    def timesteps(self, step: int, total_steps: int, n: int, generator: torch.Generator,
                  num_train_timesteps: int) -> Tensor:
        frac = torch.full((n,), self.fraction(step, total_steps), dtype=torch.float64)
        if self.jitter > 0:
            u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()
            frac = (frac + self.jitter * (2 * u - 1)).clamp(self.t_end, self.t_start)
        T = num_train_timesteps
        return (frac * T).round().clamp(0, T - 1).long()

    def sample(self, step: int, total_steps: int, n: int, generator: torch.Generator, train_sigmas: Tensor) -> Tensor:
        return train_sigmas[self.timesteps(step, total_steps, n, generator, len(train_sigmas))]


TimestepPolicy = Union[TimestepRange, AnnealedMax, Decreasing]
"""Any timestep policy (a config field of this type picks one with ``kind:``)."""
