"""Several processes under one trainer: replicated data parallelism (ddp) or sharded training (fsdp).

ddp keeps a full copy of every module per process, broadcasts rank 0's weights at the start and averages
gradients with one all-reduce per update (gloo on CPU, NCCL on GPU). fsdp (gendistill/train/sharded.py)
shards the trained modules with FSDP2, which reduce-scatters gradients itself, and checkpoints with
torch.distributed.checkpoint. With one process fsdp has nothing to shard and trains like ddp.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from gendistill.train.checkpoint import TrainState
    from gendistill.train.parts import TrainerParts


def world_size(trainer: TrainerParts) -> int:
    return trainer.accelerator.num_processes


def is_sharded(trainer: TrainerParts) -> bool:
    """fsdp with several processes (its checkpoints are sharded)."""
    return trainer.config.distributed == "fsdp" and world_size(trainer) > 1


def prepare_sharding(trainer: TrainerParts) -> None:
    """Shard the recipe's trained modules and the EMA before optimizers are built (fsdp only); rebuilds
    ``trainer.phases`` with the sharded parameters."""
    if trainer.config.distributed != "fsdp":
        return
    if not is_sharded(trainer):
        if trainer.log is not None:
            trainer.log("trainer.distributed=fsdp with one process: nothing to shard, training unsharded")
        return
    from gendistill.train import sharded  # torch.distributed.checkpoint takes seconds to import

    sharded.shard_modules(trainer, world_size(trainer))


def sync_initial_weights(trainer: TrainerParts) -> None:
    """Every rank starts from rank 0's weights."""
    if world_size(trainer) == 1 or trainer.config.distributed == "fsdp":
        return  # fsdp broadcasts before it shards
    for module in trainer.modules.values():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(trainer: TrainerParts, params: list[torch.nn.Parameter]) -> None:
    """Mean of every rank's gradients, in one flat all-reduce (fsdp reduces its shards itself)."""
    world = world_size(trainer)
    if world == 1 or not params or trainer.config.distributed == "fsdp":
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def sum_across_ranks(trainer: TrainerParts, value: torch.Tensor) -> None:
    if world_size(trainer) > 1:
        dist.all_reduce(value)


def save_sharded(trainer: TrainerParts, state: TrainState) -> Path:
    """A sharded checkpoint (a collective: every rank calls it)."""
    from gendistill.train import sharded

    return sharded.save(trainer, state)


def load_sharded(trainer: TrainerParts) -> TrainState:
    """Resume every rank from the newest readable sharded checkpoint."""
    from gendistill.train import sharded

    return sharded.load(trainer)
