"""The contract between the trainer (train/) and a recipe (distill/, score/, convert/, domains/).

It sits at the package root, beside config and errors, so the layers below train/ implement it without
importing upward.

A recipe declares its phases and, for a batch, phase and step, returns a ``Loss``. It owns no optimizer
and no loop: the trainer decides when each phase runs, builds and steps its optimizers (one per phase, or one
per parameter group when the phase declares groups), and keeps the EMA. Teacher training, classifier
training, NeRF fits, PVD and text-to-3D are recipes too.

Two optional methods let a recipe checkpoint state that lives outside its modules (a densification
strategy's running statistics, say): ``extra_state() -> dict[str, Tensor]`` and
``load_extra_state(state: dict[str, Tensor])``. The trainer calls them when they exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ParamGroup:
    """Parameters with their own optimizer inside a phase (gsplat's strategies need one Adam per group)."""

    name: str
    """Names the optimizer within its phase (``means``, ``scales``, ...)."""
    parameters: list[nn.Parameter]
    """What this group's optimizer updates."""
    lr: float | None = None
    """Learning rate of this group (None: the phase's configured rate)."""
    lr_final: float = 1.0
    """Factor the rate decays to, exponentially, by the last step (1: constant)."""


@dataclass(frozen=True)
class Phase:
    """One optimisation target of a recipe (DMD2: ``fake_score`` then ``generator``)."""

    name: str
    """Names the optimizer(s) and its config entry."""
    parameters: list[nn.Parameter] = field(default_factory=list)
    """What this phase's optimizer updates (ignored when ``groups`` is given)."""
    updates_per_step: int = 1
    """How many times this phase runs in one trainer step (DMD2's fake-score ratio)."""
    groups: tuple[ParamGroup, ...] = ()
    """When given, one optimizer per group instead of one for ``parameters``."""
    lr_final: float = 1.0
    """Without groups: the factor the rate decays to, exponentially, by the last step (1: constant)."""


@dataclass
class Loss:
    """A scalar to minimise plus named float terms for the progress bar and the loss curves."""

    total: Tensor
    terms: dict[str, float] = field(default_factory=dict)
    outputs: Any = None
    """What the step produced that hooks and callbacks need (e.g. a render, for densification and the demo)."""


@dataclass(frozen=True)
class Update:
    """What ``Recipe.after_update`` learns about the optimizer step that just happened."""

    phase: str
    step: int
    """0-based trainer step."""
    optimizers: dict[str, torch.optim.Optimizer]
    """This phase's optimizers by group name (``"all"`` when the phase has no groups). Hooks may change their
    parameters and state (gsplat's densification does)."""
    loss: Loss
    """The loss of the last micro-batch of this update."""


class Recipe(Protocol):
    def phases(self) -> list[Phase]:
        """Phases in the order they run within a step."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state is checkpointed (trainable or not), by name."""

    def ema_module(self) -> str | None:
        """Name of the module to keep an EMA of (the generator/student), or None."""

    def loss(self, batch: Any, phase: str, step: int, generator: torch.Generator) -> Loss:
        """The loss of ``phase`` on ``batch`` at ``step``; draw any noise from ``generator``."""

    def after_update(self, update: Update) -> None:
        """Called after each optimizer step of a phase (LCM's EMA target follows the student; Gaussians
        densify and prune through ``update.optimizers``)."""
