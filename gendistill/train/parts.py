"""What the parallel helpers (parallel.py, sharded.py) read and rebuild on a trainer, as a protocol, so that
they depend on the trainer's parts and not on the Trainer class that calls them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from gendistill.recipe import Phase, Recipe
from gendistill.train.config import TrainerConfig


class TrainerParts(Protocol):
    accelerator: Any
    """accelerate's Accelerator: process index and count, device, barriers."""
    config: TrainerConfig
    device: torch.device
    recipe: Recipe
    modules: dict[str, nn.Module]
    phases: list[Phase]
    ema: Any
    counters: dict[str, int]
    log: Callable[[str], None] | None
    resumed_from: Path | None

    @property
    def checkpoint_root(self) -> Path: ...

    def flat_optimizers(self) -> dict[str, torch.optim.Optimizer]: ...
