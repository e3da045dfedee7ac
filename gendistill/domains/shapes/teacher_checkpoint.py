"""Resumable state of a teacher run: atomic safetensors checkpoints and the render/latent caches.

A checkpoint is a folder ``checkpoints/<phase>-<step>/`` holding ``model.safetensors`` (VAE, text encoder,
UNet, their EMA, and the RNG states), ``optimizer.pt`` (tensors and numbers only; loaded with
``weights_only=True``) and ``state.json``. It is written under a ``.tmp`` name and renamed into place, and
the ``checkpoints/latest`` pointer is replaced atomically after it, so a killed run never leaves a torn
checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from gendistill.domains.shapes.teacher_data import TENSOR_FIELDS, LatentCache, RenderCache

MODULES = ("vae", "text_encoder", "unet")


@dataclass
class TrainState:
    """Everything besides weights that a resumed run needs to continue bit for bit."""

    phase: str
    """"vae", "diffusion", "decoder" or "done"."""
    step: int
    """Optimizer steps done in the current phase."""
    data_gen: torch.Generator
    """Picks renders, captions and caption dropout."""
    noise_gen: torch.Generator
    """Draws latents, noise and timesteps."""
    scaling_factor: float = 1.0
    """1 / std of the (zero-mean) latents, set after the VAE phase."""
    latent_mean_removed: list[float] | None = None
    """Per-channel latent mean folded into the VAE biases after its phase."""
    elapsed: float = 0.0
    """Seconds spent in optimizer steps, summed over all runs that made this state."""
    ema: dict[str, Tensor] = field(default_factory=dict, repr=False)
    """EMA of UNet and text-encoder weights (keys ``unet.*``, ``text_encoder.*``)."""
    optimizer_state: dict | None = field(default=None, repr=False)
    """Optimizer state read from a checkpoint, handed to the optimizer when its phase starts."""

    @classmethod
    def fresh(cls, seed: int) -> TrainState:
        return cls("vae", 0, torch.Generator().manual_seed(seed + 2), torch.Generator().manual_seed(seed + 3))


def find_latest(directory: Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names, or None."""
    pointer = Path(directory) / "latest"
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    return path if (path / "model.safetensors").is_file() else None


def save_checkpoint(directory: Path, components, state: TrainState, optimizer, keep: int = 2) -> Path:
    """Write one checkpoint atomically, point ``latest`` at it, and drop all but the newest ``keep``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{state.phase}-{state.step:07d}"
    tmp, final = directory / f"{name}.tmp", directory / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {}
    for module in MODULES:
        for k, v in getattr(components, module).state_dict().items():
            tensors[f"{module}.{k}"] = v.detach().contiguous().clone()
    for k, v in state.ema.items():
        tensors[f"ema.{k}"] = v.contiguous().clone()
    tensors["rng.data"] = state.data_gen.get_state()
    tensors["rng.noise"] = state.noise_gen.get_state()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "gendistill-shapes-teacher-ckpt"})
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    meta = {"phase": state.phase, "step": state.step, "scaling_factor": state.scaling_factor,
            "latent_mean_removed": state.latent_mean_removed, "elapsed": state.elapsed}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = directory / "latest.tmp"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, directory / "latest")
    _prune(directory, keep, final)
    return final


def _prune(directory: Path, keep: int, newest: Path) -> None:
    folders = [p for p in directory.iterdir() if p.is_dir() and not p.name.endswith(".tmp")]
    folders.sort(key=lambda p: p.stat().st_mtime)
    for old in folders[:-max(1, keep)]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, components, state: TrainState) -> TrainState:
    """Load weights into ``components`` and return the saved TrainState (optimizer state attached)."""
    tensors = load_file(str(Path(path) / "model.safetensors"))
    for module in MODULES:
        prefix = module + "."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        getattr(components, module).load_state_dict(sub, strict=True)
    meta = json.loads((Path(path) / "state.json").read_text())
    state.phase, state.step = meta["phase"], int(meta["step"])
    state.scaling_factor = float(meta["scaling_factor"])
    state.latent_mean_removed = meta["latent_mean_removed"]
    state.elapsed = float(meta["elapsed"])
    state.ema = {k[len("ema."):]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
    state.data_gen.set_state(tensors["rng.data"])
    state.noise_gen.set_state(tensors["rng.noise"])
    components.vae.register_to_config(scaling_factor=state.scaling_factor)
    optimizer_file = Path(path) / "optimizer.pt"
    state.optimizer_state = None
    if optimizer_file.is_file():
        state.optimizer_state = _fresh_copies(torch.load(optimizer_file, weights_only=True))
    return state


def _fresh_copies(obj):
    """Clone every tensor of a loaded structure: tensors read from a file can sit at unaligned addresses,
    where CPU kernels take other (non-FMA) code paths and a resumed run would drift by an ulp."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _fresh_copies(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fresh_copies(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- caches


def load_or_make_renders(path: Path, fingerprint: str, make: Callable[[], RenderCache]) -> RenderCache:
    """Read the render cache at ``path`` if it was made with ``fingerprint``, else make and save it.

    Captions are recomputed from the stored scenes and cameras, so they always follow captions.py.
    """
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return RenderCache(**{name: f.get_tensor(name).clone() for name in TENSOR_FIELDS}).with_captions()
    cache = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(cache.tensors(), path, {"fingerprint": fingerprint})
    return cache


def load_or_make_latents(path: Path, fingerprint: str, make: Callable[[], LatentCache]) -> LatentCache:
    """Read the latent cache at ``path`` if it was made with ``fingerprint``, else make and save it."""
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return LatentCache(f.get_tensor("mean").clone(), f.get_tensor("std").clone())
    cache = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"mean": cache.mean.contiguous(), "std": cache.std.contiguous()}, path,
                 {"fingerprint": fingerprint})
    return cache


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def encoder_fingerprint(vae) -> str:
    """A cheap checksum of the VAE encoder's weights (to know whether a latent cache still matches it)."""
    with torch.no_grad():
        tensors = [*vae.encoder.state_dict().values(), *vae.quant_conv.state_dict().values()]
        total = sum(float(v.double().sum()) + float(v.double().abs().sum()) for v in tensors if v.is_floating_point())
    return f"{total:.10e}"

