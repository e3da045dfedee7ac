"""Timestep policies and ramps for score distillation: typed, frozen, YAML-loadable (a ``kind:`` key picks one).

A policy says which of the teacher's discrete training timesteps a step of optimisation uses. Timesteps are
given as fractions of T (the teacher's number of training timesteps, DreamFusion's 0.02-0.98 is
``UniformRange(0.02, 0.98)``); fraction ``f`` is timestep ``round(f * T)``, clamped to ``[0, T - 1]``.
``step`` is 0-based: ``step = 0`` is the start of training and ``step = total_steps - 1`` its end, where every
annealed value reaches its final value.

Each policy gives ``timesteps(step, total_steps, n, generator, num_train_timesteps)`` (indices) and
``sample(step, total_steps, n, generator, train_sigmas)`` (the sigmas at those indices). The sigma table is an
argument rather than a field so that a policy is plain config data, independent of the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Union

import torch
from torch import Tensor

from gendistill.errors import check_range


def timestep_index(fraction: float, num_train_timesteps: int) -> int:
    """Fraction of T to a training timestep index in ``[0, T - 1]`` (0.98 of 1000 is 980, as threestudio)."""
    return min(num_train_timesteps - 1, max(0, round(fraction * num_train_timesteps)))


def progress(step: int, total_steps: int) -> float:
    """Where ``step`` (0-based) lies in training: 0 at the first step, 1 at the last, clamped."""
    if total_steps <= 1:
        return 1.0
    return min(1.0, max(0.0, step / (total_steps - 1)))


def _uniform_indices(lo: int, hi: int, n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=generator.device).cpu()


def _check_fractions(kind: str, **fractions: float) -> None:
    for name, value in fractions.items():
        check_range(f"{kind}.{name}", value, 0.0, 1.0)


@dataclass(frozen=True)
class UniformRange:
    """Timesteps uniform in ``[t_min, t_max]`` at every step (DreamFusion, Poole et al. 2022)."""

    KIND: ClassVar[str] = "uniform"

    t_min: float = 0.02
    """Smallest timestep, as a fraction of T (inclusive)."""
    t_max: float = 0.98
    """Largest timestep, as a fraction of T (inclusive)."""

    def __post_init__(self) -> None:
        _check_fractions("timesteps", t_min=self.t_min, t_max=self.t_max)
        check_range("timesteps.t_max", self.t_max, self.t_min, 1.0)

    def timesteps(self, step: int, total_steps: int, n: int, generator: torch.Generator,
                  num_train_timesteps: int) -> Tensor:
        T = num_train_timesteps
        return _uniform_indices(timestep_index(self.t_min, T), timestep_index(self.t_max, T), n, generator)

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

    def __post_init__(self) -> None:
        _check_fractions("timesteps", t_min=self.t_min, t_max_start=self.t_max_start, t_max_end=self.t_max_end)
        check_range("timesteps.t_max_start", self.t_max_start, self.t_min, 1.0)
        check_range("timesteps.t_max_end", self.t_max_end, self.t_min, 1.0)

    def t_max(self, step: int, total_steps: int) -> float:
        """The upper end (a fraction of T) at ``step``."""
        return self.t_max_start + (self.t_max_end - self.t_max_start) * progress(step, total_steps)

    def timesteps(self, step: int, total_steps: int, n: int, generator: torch.Generator,
                  num_train_timesteps: int) -> Tensor:
        T = num_train_timesteps
        hi = timestep_index(self.t_max(step, total_steps), T)
        return _uniform_indices(timestep_index(self.t_min, T), hi, n, generator)

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

    def __post_init__(self) -> None:
        _check_fractions("timesteps", t_start=self.t_start, t_end=self.t_end, jitter=self.jitter)
        check_range("timesteps.t_end", self.t_end, 0.0, self.t_start)

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


TimestepPolicy = Union[UniformRange, AnnealedMax, Decreasing]
"""Any timestep policy (a config field of this type picks one with ``kind:``)."""


@dataclass(frozen=True)
class LinearRamp:
    """A value annealed over training: ``start`` until ``start_step``, then linear, ``end`` from ``end_step``
    on. ``start == end`` is a constant."""

    KIND: ClassVar[str] = "linear"

    start: float = 1.0
    """Value up to ``start_step``."""
    end: float = 1.0
    """Value from ``end_step`` on."""
    start_step: int = 0
    """Step (0-based) where the ramp leaves ``start``."""
    end_step: int = 0
    """Step where the ramp reaches ``end`` (at least ``start_step``)."""

    def __post_init__(self) -> None:
        check_range("ramp.start_step", self.start_step, 0)
        check_range("ramp.end_step", self.end_step, self.start_step)

    def value(self, step: int) -> float:
        """The value at ``step``."""
        if step >= self.end_step:
            return self.end
        if step <= self.start_step:
            return self.start
        return self.start + (self.end - self.start) * (step - self.start_step) / (self.end_step - self.start_step)
