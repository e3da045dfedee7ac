"""Optimizers of a recipe's phases: one per phase, or one per parameter group, with warm-up and decay."""

from __future__ import annotations

import torch

from gendistill.recipe import Phase
from gendistill.train.config import OptimizerConfig

UNGROUPED = "all"
"""The group name of a phase that declares no parameter groups."""


def build_optimizers(phase: Phase, config: OptimizerConfig) -> dict[str, torch.optim.Optimizer]:
    """The optimizers of ``phase`` by group name; each param group remembers its base rate and decay."""
    if not phase.groups:
        return {UNGROUPED: _optimizer(phase.parameters, config.lr, phase.lr_final, config)}
    return {g.name: _optimizer(g.parameters, config.lr if g.lr is None else g.lr, g.lr_final, config)
            for g in phase.groups}


def _optimizer(parameters, lr: float, lr_final: float, config: OptimizerConfig) -> torch.optim.Optimizer:
    group = {"params": list(parameters), "lr": lr, "base_lr": lr, "lr_final": lr_final}
    if config.kind == "sgd":
        return torch.optim.SGD([group], lr=lr, weight_decay=config.weight_decay)
    kwargs = dict(lr=lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    if config.kind == "adam":
        return torch.optim.Adam([group], **kwargs)
    return torch.optim.AdamW([group], **kwargs)


def set_learning_rates(optimizer: torch.optim.Optimizer, config: OptimizerConfig, update: int, step: int,
                       total_steps: int) -> None:
    """Linear warm-up over this phase's first ``config.warmup_steps`` updates, times an exponential decay from
    the base rate to ``base * lr_final`` over the run (``step`` is the 0-based trainer step)."""
    warm = min(1.0, (update + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    progress = step / max(1, total_steps - 1)
    for group in optimizer.param_groups:
        base = group.get("base_lr", config.lr)  # checkpoints from before per-group rates lack these keys
        group["lr"] = base * warm * group.get("lr_final", 1.0) ** progress


def optimizer_parameters(optimizers: dict[str, torch.optim.Optimizer]) -> list[torch.nn.Parameter]:
    """The parameters the optimizers hold now (densification replaces them, so never cache this list)."""
    return [p for opt in optimizers.values() for group in opt.param_groups for p in group["params"]]
