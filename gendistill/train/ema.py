"""Exponential moving average of a module's floating-point state."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * current`` after every optimizer step of the tracked module."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float | None = None) -> None:
        """One EMA step at ``decay`` (default: the configured one)."""
        decay = self.decay if decay is None else decay
        for ema_t, t in zip(self.shadow.state_dict().values(), module.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_t.lerp_(t.to(ema_t.dtype), 1 - decay)
            else:
                ema_t.copy_(t)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)

    @contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """``module`` holding the shadow's values for the duration; its own come back exactly after (copied in
        place, so optimizers keep their references)."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow.state_dict())
        try:
            yield module
        finally:
            module.load_state_dict(live)


def warmed_up_decay(decay: float, updates: int) -> float:
    """``min(decay, (1 + n) / (10 + n))`` after ``n`` earlier updates: the shadow follows the weights closely
    at first, so no trace of the random initialisation survives a short run (the shapes teacher's schedule)."""
    return min(decay, (1 + updates) / (10 + updates))
