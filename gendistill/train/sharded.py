"""Sharded training (trainer.distributed = "fsdp"): torch's FSDP2 ``fully_shard`` plus sharded checkpoints.

Each process keeps 1/N of every trainable module's parameters, gradients and optimizer state (and of the
EMA shadow, which is sharded the same way so its update stays local). A module's weights are gathered in
its forward (FSDP2's pre-forward hook) and gradients are reduce-scattered (averaged) in backward.

``fully_shard`` is called directly rather than through accelerate's ``FullyShardedDataParallelPlugin``:
accelerate switches to FSDP only on GPU-like backends (on CPU/gloo its plugin is ignored), and its
``prepare`` wants each model with its optimizer, while the trainer builds one optimizer per phase and
parameter group after sharding. accelerate still launches the processes and owns the process group.

Checkpoints use torch.distributed.checkpoint (DCP): every process writes its shards into the same
``checkpoints/step-NNNNNNN`` folder (written under a temporary name, renamed by rank 0 once complete, then
``latest`` points at it), and rank 0 adds ``state.json`` with the step, history and counters. Several
processes therefore need one shared filesystem. ``torch.distributed.checkpoint.format_utils.
dcp_to_torch_save`` turns such a folder into one ordinary file.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from gendistill.errors import UserError
from gendistill.recipe import Phase
from gendistill.train.checkpoint import TrainState, _write_atomic, checkpoints_newest_first

if TYPE_CHECKING:
    from gendistill.train.parts import TrainerParts


def shard_modules(trainer: TrainerParts, world: int) -> None:
    """Shard every module trained by a phase (and its EMA), after every rank took rank 0's weights;
    ``trainer.phases`` is rebuilt with the sharded parameters (FSDP2 replaces every Parameter)."""
    if trainer.config.mixed_precision == "fp16":
        raise UserError("trainer.mixed_precision: fp16 (gradient scaling) is not supported with "
                        "trainer.distributed=fsdp; use bf16")
    ema_name = trainer.recipe.ema_module() if trainer.ema is not None else None
    replicas = list(trainer.modules.values()) + ([trainer.ema.shadow] if trainer.ema is not None else [])
    for module in replicas:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)
    names = _parameter_names(trainer.modules)
    trained_params = [p for phase in trainer.phases for p in _phase_parameters(phase)]
    if any(id(p) not in names for p in trained_params):
        raise UserError("trainer.distributed=fsdp shards modules: every parameter a phase trains must belong "
                        "to one of the recipe's modules()")
    trained = {names[id(p)][0] for p in trained_params}
    mesh = init_device_mesh(trainer.device.type, (world,))
    for name in sorted(trained):
        shard_module(trainer.modules[name], mesh)
        if name == ema_name:
            shard_module(trainer.ema.shadow, mesh)
    now = {(m, n): p for m, module in trainer.modules.items() for n, p in module.named_parameters()}
    trainer.phases = [_remap(phase, lambda p: now[names[id(p)]]) for phase in trainer.phases]


def shard_module(module: nn.Module, mesh) -> None:
    """One FSDP unit per composite block in an ``nn.ModuleList`` (the blocks of a UNet or a transformer: their
    weights are gathered one block at a time; single layers stay in the enclosing unit), then one for the
    rest of the module."""
    for sub in reversed(list(module.modules())):
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                if _is_block(block):
                    fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)


def _is_block(module: nn.Module) -> bool:
    has_children = any(True for _ in module.children())
    return has_children and not isinstance(module, FSDPModule) and any(True for _ in module.parameters())


def _parameter_names(modules: dict[str, nn.Module]) -> dict[int, tuple[str, str]]:
    return {id(p): (m, n) for m, module in modules.items() for n, p in module.named_parameters()}


def _phase_parameters(phase: Phase) -> list[nn.Parameter]:
    return [p for g in phase.groups for p in g.parameters] if phase.groups else list(phase.parameters)


def _remap(phase: Phase, new) -> Phase:
    groups = tuple(replace(g, parameters=[new(p) for p in g.parameters]) for g in phase.groups)
    return replace(phase, parameters=[new(p) for p in phase.parameters], groups=groups)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A sharded module's whole weights as ordinary CPU tensors, on every rank (a collective: call it on all)."""
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().cpu() for k, v in full.items()}


# --- checkpoints ------------------------------------------------------------------------------------


def _everything(trainer: TrainerParts) -> dict:
    """The state DCP saves and loads in place (optimizer states keyed by parameter name, so they reshard)."""
    box = nn.ModuleDict(trainer.modules)
    state = {"modules": get_model_state_dict(box),
             "optimizers": {k: get_optimizer_state_dict(box, opt) for k, opt in trainer.flat_optimizers().items()}}
    if trainer.ema is not None:
        state["ema"] = get_model_state_dict(trainer.ema.shadow)
    if hasattr(trainer.recipe, "extra_state"):
        state["extra"] = trainer.recipe.extra_state()
    return state


def save(trainer: TrainerParts, state: TrainState) -> Path:
    """Every rank writes its shards into ``step-NNNNNNN`` (atomically renamed by rank 0); returns its path."""
    root, main = trainer.checkpoint_root, trainer.accelerator.is_main_process
    final = root / f"step-{state.step:07d}"
    tmp = root / f".{final.name}.tmp"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    dcp.save(_everything(trainer), checkpoint_id=str(tmp))
    if main:
        state.counters = dict(trainer.counters)
        meta = {"step": state.step, "history": state.history, "counters": state.counters,
                "format": "dcp", "world_size": dist.get_world_size()}
        (tmp / "state.json").write_text(json.dumps(meta))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / "latest", final.name)
        for old in checkpoints_newest_first(root)[trainer.config.keep_checkpoints:]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(trainer: TrainerParts) -> TrainState:
    """Resume from the newest checkpoint every rank reads whole (DCP raises the same error on all ranks)."""
    root = trainer.checkpoint_root
    unreadable = []
    for path in checkpoints_newest_first(root):
        try:
            state = _load_from(trainer, path)
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - any damage: try the previous one
            unreadable.append(f"{path.name}: {_reason(err)}")
            continue
        trainer.counters.update(state.counters)
        trainer.resumed_from = path
        if trainer.log is not None:
            skipped = f" (newer, unreadable: {'; '.join(unreadable)})" if unreadable else ""
            trainer.log(f"resumed from {path.name}{skipped}")
        return state
    if not unreadable:
        raise UserError(f"--resume: no checkpoint in {root}")
    raise UserError(f"--resume: no readable checkpoint in {root} ({'; '.join(unreadable)})")


def _reason(err: BaseException) -> str:
    """One line: what went wrong (for DCP, the first failing rank's own exception)."""
    if isinstance(err, CheckpointException) and err.failures:
        rank, (err, _) = next(iter(sorted(err.failures.items())))
        return f"rank {rank}: {_reason(err)}"
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _load_from(trainer: TrainerParts, path: Path) -> TrainState:
    meta = json.loads((path / "state.json").read_text())
    if meta.get("format") != "dcp":
        raise UserError("not a sharded (fsdp) checkpoint")
    state = _everything(trainer)
    dcp.load(state, checkpoint_id=str(path))
    box = nn.ModuleDict(trainer.modules)
    set_model_state_dict(box, state["modules"])
    for name, opt in trainer.flat_optimizers().items():
        set_optimizer_state_dict(box, opt, state["optimizers"][name])
    if trainer.ema is not None:
        set_model_state_dict(trainer.ema.shadow, state["ema"])
    if "extra" in state and hasattr(trainer.recipe, "load_extra_state"):
        trainer.recipe.load_extra_state(state["extra"])
    return TrainState(meta["step"], meta["history"], meta["counters"])
