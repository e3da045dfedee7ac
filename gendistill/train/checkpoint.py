"""Atomic safetensors checkpoints: modules, EMA, optimizers and trainer state, resumable exactly.

A checkpoint is a folder ``checkpoints/step-NNNNNNN/`` written under a temporary name and renamed into
place, so a crash mid-write never leaves a half checkpoint; ``checkpoints/latest`` names the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gendistill.errors import UserError


@dataclass
class TrainState:
    """What besides tensors a resumed run needs."""

    step: int
    history: list[dict]
    """One row per logged step or evaluation: {"step": ..., "phase/term": value, ...}."""


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
                    keep: int = 2) -> Path:
    """Write ``root/step-NNNNNNN`` atomically, point ``root/latest`` at it, keep the newest ``keep``."""
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
    opt_tensors, opt_meta = {}, {}
    for name, optimizer in optimizers.items():
        tensors, opt_meta[name] = optimizer_tensors(name, optimizer)
        opt_tensors.update(tensors)
    save_file(opt_tensors, tmp / "optimizers.safetensors")
    meta = {"step": state.step, "history": state.history, "optimizers": opt_meta}
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


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    ema=None) -> TrainState:
    """Restore everything ``save_checkpoint`` wrote; returns the trainer state."""
    if not (path / "state.json").is_file():
        raise UserError(f"{path} is not a gendistill checkpoint (no state.json)")
    weights = load_file(path / "modules.safetensors")
    for name, module in modules.items():
        module.load_state_dict(_unflat(f"{name}/", weights))
    meta = json.loads((path / "state.json").read_text())
    opt_tensors = load_file(path / "optimizers.safetensors")
    for name, optimizer in optimizers.items():
        load_optimizer(name, optimizer, opt_tensors, meta["optimizers"][name])
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(load_file(path / "ema.safetensors"))
    return TrainState(meta["step"], meta["history"])
