"""Trainer settings shared by every recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimizerConfig:
    """AdamW settings for one phase."""

    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, ...] = (0.9, 0.999)
    """Adam betas."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer steps of this phase."""


@dataclass
class TrainerConfig:
    """The loop: how long, how each phase is optimised, and what is saved and measured when."""

    steps: int = 1000
    """Trainer steps (each runs every phase its declared number of times)."""
    seed: int = 0
    """Seed of every random draw; a step's draws depend only on (seed, step, phase, repeat, rank)."""
    optimizers: dict[str, OptimizerConfig] = field(default_factory=dict)
    """Optimizer per phase name; phases not named use the defaults of OptimizerConfig."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision (fp16 only on CUDA, with a gradient scaler)."""
    grad_accumulation: int = 1
    """Micro-batches summed before each optimizer step."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm of each phase to this (None: no clipping)."""
    ema_decay: float | None = None
    """EMA decay for the recipe's EMA module (None: no EMA)."""
    checkpoint_every: int = 200
    """Save a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    eval_every: int = 0
    """Run the evaluation hook every this many steps (0: only at the end)."""
    log_every: int = 10
    """Record losses in the history every this many steps."""
