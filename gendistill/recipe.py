"""The contract between the trainer (train/) and a recipe (distill/, score/).

It sits at the package root, beside config and errors, so the layers below train/ implement it without
importing upward.

A recipe declares its phases and, for a batch, phase and step, returns a ``Loss``. It owns no optimizer
and no loop: the trainer decides when each phase runs, steps its optimizer, and keeps the EMA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Phase:
    """One optimisation target of a recipe (DMD2: ``fake_score`` then ``generator``)."""

    name: str
    """Names the optimizer and its config entry."""
    parameters: list[nn.Parameter]
    """What this phase's optimizer updates."""
    updates_per_step: int = 1
    """How many times this phase runs in one trainer step (DMD2's fake-score ratio)."""


@dataclass
class Loss:
    """A scalar to minimise plus named float terms for the progress bar and the loss curves."""

    total: Tensor
    terms: dict[str, float] = field(default_factory=dict)


class Recipe(Protocol):
    def phases(self) -> list[Phase]:
        """Phases in the order they run within a step."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state is checkpointed (trainable or not), by name."""

    def ema_module(self) -> str | None:
        """Name of the module to keep an EMA of (the generator/student), or None."""

    def loss(self, batch: Any, phase: str, step: int, generator: torch.Generator) -> Loss:
        """The loss of ``phase`` on ``batch`` at ``step``; draw any noise from ``generator``."""

    def after_update(self, phase: str, step: int) -> None:
        """Called after each optimizer step of ``phase`` (e.g. LCM's EMA target follows the student)."""
