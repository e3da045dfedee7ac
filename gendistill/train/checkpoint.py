"""Atomic safetensors checkpoints: modules, EMA, optimizers and trainer state, resumable exactly.

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` written under a temporary name and renamed into
place, so a crash mid-write never leaves a half checkpoint; ``checkpoints/latest`` names the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gendistill.errors import UserError, first_line


@dataclass
class TrainState:
    """What besides tensors a resumed run needs."""

    step: int
    history: list[dict]
    """One row per logged step or evaluation: {"step": ..., "phase/term": value, ...}."""
    counters: dict[str, int] = field(default_factory=dict)
    """Integer bookkeeping that must survive a resume (updates per phase, skipped updates)."""


def _flat(prefix: str, state: dict) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def _unflat(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer's state into safetensors-ready tensors and JSON-ready rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(name: str, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        opt, index, field = key.split("/", 2)
        if opt == name:
            state.setdefault(int(index), {})[field] = value
    for key, value in meta["scalars"].items():
        index, field = key.split("/", 1)
        state.setdefault(int(index), {})[field] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(root: Path, state: TrainState, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], ema: dict[str, torch.Tensor] | None,
                    keep: int = 2, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``root/step-NNNNNNN`` atomically, point ``root/latest`` at it, keep the newest ``keep``.
    ``optimizers`` are keyed by a name without "/" (the trainer uses ``phase.group``)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:07d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {}
    for name, module in modules.items():
        weights.update(_flat(f"{name}/", module.state_dict()))
    save_file(weights, tmp / "modules.safetensors")
    if ema is not None:
        save_file(_flat("", ema), tmp / "ema.safetensors")
    if extra:
        save_file(_flat("", extra), tmp / "extra.safetensors")
    opt_tensors, opt_meta = {}, {}
    for name, optimizer in optimizers.items():
        tensors, opt_meta[name] = optimizer_tensors(name, optimizer)
        opt_tensors.update(tensors)
    save_file(opt_tensors, tmp / "optimizers.safetensors")
    meta = {"step": state.step, "history": state.history, "optimizers": opt_meta, "counters": state.counters}
    (tmp / "state.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def checkpoints_newest_first(root: Path) -> list[Path]:
    """Every finished checkpoint folder under ``root``, newest step first."""
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True) if root.is_dir() else []


@dataclass
class CheckpointData:
    """Everything a checkpoint holds, read fully into memory before any of it is applied."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    meta: dict
    ema: dict[str, torch.Tensor] | None
    extra: dict[str, torch.Tensor] | None


def read_checkpoint(path: Path) -> CheckpointData:
    """Read a checkpoint; any damage (a missing or truncated file) raises before anything is changed."""
    if not (path / "state.json").is_file():
        raise UserError(f"{path} is not a gendistill checkpoint (no state.json)")
    meta = json.loads((path / "state.json").read_text())
    ema = load_file(path / "ema.safetensors") if (path / "ema.safetensors").is_file() else None
    extra = load_file(path / "extra.safetensors") if (path / "extra.safetensors").is_file() else None
    return CheckpointData(path, load_file(path / "modules.safetensors"), load_file(path / "optimizers.safetensors"),
                          meta, ema, extra)


def read_newest_readable(root: Path) -> tuple[CheckpointData, list[str]]:
    """The newest checkpoint under ``root`` that reads whole, and one line per newer one that did not.
    A UserError when there is none, or none is readable."""
    unreadable = []
    for path in checkpoints_newest_first(root):
        try:
            return read_checkpoint(path), unreadable
        except Exception as err:  # noqa: BLE001 - any damage means: try the previous checkpoint
            reason = first_line(err)
            unreadable.append(f"{path.name}: {reason}")
    if not unreadable:
        raise UserError(f"--resume: no checkpoint in {root}")
    raise UserError(f"--resume: no readable checkpoint in {root} ({'; '.join(unreadable)})")


def load_module_state(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """``load_state_dict``, except that a tensor whose size changed during training (Gaussians that
    densified) replaces the parameter's data in place, so optimizers keep pointing at the same parameter."""
    own = module.state_dict(keep_vars=True)
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the module: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for key, value in tensors.items():
            target = own[key]
            if target.shape == value.shape:
                target.copy_(value)
            else:
                target.data = value.to(device=target.device, dtype=target.dtype)


def apply_checkpoint(data: CheckpointData, modules: dict[str, nn.Module],
                     optimizers: dict[str, torch.optim.Optimizer], ema=None) -> TrainState:
    """Load what ``read_checkpoint`` read into the modules, optimizers and EMA; returns the trainer state."""
    for name, module in modules.items():
        load_module_state(module, _unflat(f"{name}/", data.weights))
    for name, optimizer in optimizers.items():
        load_optimizer(name, optimizer, data.optimizer_tensors, data.meta["optimizers"][name])
    if ema is not None and data.ema is not None:
        ema.load_state_dict(data.ema)
    return TrainState(data.meta["step"], data.meta["history"], data.meta.get("counters", {}))


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    ema=None) -> TrainState:
    """Restore everything ``save_checkpoint`` wrote to ``path``; returns the trainer state."""
    return apply_checkpoint(read_checkpoint(path), modules, optimizers, ema)
