"""Radiance field checkpoints: one safetensors file, the FieldConfig as JSON in its metadata.

Metadata keys: ``format`` = ``gendistill-radiance-field``, ``version`` = ``1`` and ``field_config`` (the
config as plain data). Tensors are the field's ``state_dict``, so any safetensors reader can open the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gendistill.config import from_dict, to_dict
from gendistill.errors import UserError
from gendistill.render.nerf.fields import FieldConfig, RadianceField, build_field

FORMAT = "gendistill-radiance-field"
"""The ``format`` metadata value that marks a field checkpoint."""


def save_field(field: RadianceField, path: str | Path) -> Path:
    """Write ``field`` to ``path`` (parent folders are created, the file is replaced atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    metadata = {"format": FORMAT, "version": "1", "field_config": json.dumps(to_dict(field.config))}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_field_config(path: str | Path) -> FieldConfig:
    """The FieldConfig stored in a checkpoint; a file that is not one is a UserError (one line)."""
    return _open(Path(path))[0]


def load_field(path: str | Path, device: str | torch.device = "cpu") -> RadianceField:
    """The field saved at ``path``, on ``device``; a file that is not a field checkpoint is a UserError."""
    config, tensors = _open(Path(path), device)
    field = build_field(config, seed=0)
    try:
        field.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise UserError(f"{path}: tensors do not match its {config.architecture} config "
                        f"({str(err).splitlines()[0]})") from None
    return field.to(device)


def _open(path: Path, device="cpu") -> tuple[FieldConfig, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise UserError(f"no radiance field checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a safetensors file ({str(err).splitlines()[0]})") from None
    if metadata.get("format") != FORMAT or "field_config" not in metadata:
        raise UserError(f"{path} is a safetensors file but not a gendistill radiance field checkpoint "
                        f"(its metadata has no format={FORMAT!r})")
    try:
        config = from_dict(FieldConfig, json.loads(metadata["field_config"]))
    except json.JSONDecodeError:
        raise UserError(f"{path}: its field_config metadata is not JSON") from None
    return config, tensors
