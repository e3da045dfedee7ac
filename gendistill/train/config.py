"""Trainer settings shared by every recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gendistill.errors import UserError, check_range, key_path


@dataclass
class OptimizerConfig:
    """Optimizer settings for one phase (every parameter group of the phase shares them, except the rate)."""

    kind: Literal["adamw", "adam", "sgd"] = "adamw"
    """AdamW (decoupled weight decay), Adam, or plain SGD (no momentum: LUSD's step on normalised gradients)."""
    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, ...] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam's epsilon (3D Gaussians use 1e-15)."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for AdamW)."""
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
    ema_warmup: bool = False
    """Ramp the EMA decay up as ``min(decay, (1 + n) / (10 + n))`` over the first updates."""
    checkpoint_every: int = 200
    """Save a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    eval_every: int = 0
    """Run the evaluation hook every this many steps (0: only at the end)."""
    eval_on_ema: bool = True
    """Evaluate with the EMA's weights in the EMA module (what an export takes), the live ones restored after;
    false: the live weights. Sharded (fsdp) runs evaluate the live weights."""
    log_every: int = 10
    """Record losses in the history every this many steps."""
    nan_policy: Literal["raise", "skip"] = "raise"
    """A non-finite loss or gradient: stop the run (raise) or skip that update (skip)."""
    max_bad_steps: int = 10
    """With nan_policy skip: stop after this many skipped updates in a row."""
    seed_global_rng: bool = True
    """Also seed torch's global generator from each update's coordinates (libraries that draw from it, such
    as gsplat's densification or peft's LoRA init, then resume exactly); the process's own stream is restored
    after the run."""
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """With several processes (``accelerate launch --num_processes N``): replicate every module and average
    gradients (ddp), or shard the parameters, gradients, optimizer state and EMA of every module a phase
    trains across the processes (fsdp: torch's FSDP2 ``fully_shard``, one unit per ``nn.ModuleList`` block,
    gloo on CPU or NCCL). fsdp writes sharded torch.distributed.checkpoint folders (one shared filesystem) that
    resume exactly; sharded modules must be called through their forward, eval_fn then runs on every process,
    and it does not combine with fp16 or hooks that replace parameters (densification). One process: as ddp."""

    def check(self, path: str) -> None:
        """UserErrors naming the key (e.g. "trainer.steps must be >= 1, got -3"); run at config load."""
        for name, low in (("steps", 1), ("log_every", 1), ("grad_accumulation", 1), ("keep_checkpoints", 1),
                          ("checkpoint_every", 0), ("eval_every", 0)):
            check_range(key_path(path, name), getattr(self, name), low)
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserError(f"{key_path(path, 'ema_decay')} must be in (0, 1) or null (no EMA), "
                            f"got {self.ema_decay:g}")
        if self.grad_clip is not None:
            check_range(key_path(path, "grad_clip"), self.grad_clip, 0.0)
