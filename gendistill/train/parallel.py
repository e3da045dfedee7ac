"""Several processes under one trainer: replicated data parallelism (ddp) or sharded training (fsdp).

ddp keeps a full copy of every module per process, broadcasts rank 0's weights at the start and averages
gradients with one all-reduce per update (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from gendistill.errors import UserError

if TYPE_CHECKING:
    from gendistill.train.checkpoint import TrainState
    from gendistill.train.trainer import Trainer


def world_size(trainer: Trainer) -> int:
    return trainer.accelerator.num_processes


def prepare_sharding(trainer: Trainer) -> None:
    """Shard the recipe's modules before optimizers are built (fsdp only)."""
    if trainer.config.distributed == "fsdp":
        raise UserError("trainer.distributed: fsdp is not available yet; use ddp")


def sync_initial_weights(trainer: Trainer) -> None:
    """Every rank starts from rank 0's weights."""
    if world_size(trainer) == 1 or trainer.config.distributed == "fsdp":
        return
    for module in trainer.modules.values():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def average_gradients(trainer: Trainer, params: list[torch.nn.Parameter]) -> None:
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


def sum_across_ranks(trainer: Trainer, value: torch.Tensor) -> None:
    if world_size(trainer) > 1:
        dist.all_reduce(value)


def save_sharded(trainer: Trainer, state: TrainState):
    raise UserError("trainer.distributed: fsdp checkpoints are not available yet")


def load_sharded(trainer: Trainer) -> TrainState:
    raise UserError("trainer.distributed: fsdp checkpoints are not available yet")
