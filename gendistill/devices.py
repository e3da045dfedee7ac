"""Where to run: the one rule every command and job uses for ``device: auto``."""

from __future__ import annotations

import torch


def pick_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` or None: CUDA when available, else the CPU; any other name as torch reads it."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
