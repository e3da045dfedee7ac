"""Sets of 3D Gaussians: place a scene in another's frame, join scenes, keep a subset, merge PLY files.

What ``gendistill edit-3d``'s evaluation scenes are made of: two text-to-3D objects scaled down and set side by
side in one scene (``merge_plys``); the benchmark renders each object's own Gaussians (``gaussian_subset``)
and brings one back to the origin (``placed_gaussians`` with the inverse placement) for the classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

import torch
from torch import Tensor

from gendistill.render.gaussians import GaussianParams
from gendistill.render.ply import load_ply, save_ply


@dataclass(frozen=True)
class Placement:
    """A uniform scale about the origin, then a translation: ``x -> scale * x + offset``."""

    scale: float = 1.0
    """Factor on positions and on every axis of every Gaussian."""
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """World translation after scaling."""

    def inverse(self) -> Placement:
        """The placement that undoes this one."""
        return Placement(1.0 / self.scale, tuple(-o / self.scale for o in self.offset))


def placed_gaussians(params: GaussianParams, placement: Placement) -> GaussianParams:
    """A copy of ``params`` moved by ``placement``: means scaled and shifted, log scales plus ``log(scale)``;
    rotations, opacities and colours unchanged (a uniform scale keeps view directions, so SH too)."""
    if placement.scale <= 0:
        raise ValueError(f"a placement's scale must be > 0, got {placement.scale}")
    with torch.no_grad():
        offset = torch.tensor(placement.offset, dtype=params.means.dtype, device=params.means.device)
        return GaussianParams(params.means * placement.scale + offset, params.log_scales + math.log(placement.scale),
                              params.quats, params.opacity_logits, params.sh0, params.shN)


def concat_gaussians(parts: Sequence[GaussianParams]) -> GaussianParams:
    """One scene holding every Gaussian of ``parts``, in order; they must share the SH degree."""
    if not parts:
        raise ValueError("concat_gaussians needs at least one set of Gaussians")
    degrees = {p.sh_degree for p in parts}
    if len(degrees) > 1:
        raise ValueError(f"cannot join Gaussians of SH degrees {sorted(degrees)}")
    with torch.no_grad():
        return GaussianParams(*(torch.cat([getattr(p, name) for p in parts])
                                for name in ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")))


def gaussian_subset(params: GaussianParams, keep: Tensor) -> GaussianParams:
    """A copy of the Gaussians where ``keep`` (N,) bool is true."""
    with torch.no_grad():
        return GaussianParams(*(getattr(params, name)[keep]
                                for name in ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")))


def merge_plys(paths: Sequence[str | Path], placements: Sequence[Placement], out: str | Path) -> tuple[Path, Tensor]:
    """Load each 3DGS PLY, move it by its placement, join them and write ``out``; returns the path and each
    Gaussian's part index (N,) int64 (which file it came from)."""
    if len(paths) != len(placements):
        raise ValueError(f"{len(paths)} PLY files but {len(placements)} placements")
    parts = [placed_gaussians(load_ply(path), placement) for path, placement in zip(paths, placements)]
    labels = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)])
    return save_ply(concat_gaussians(parts), out), labels
