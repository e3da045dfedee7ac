"""Smoothness priors on a radiance field's own parameters.

TensoRF (Chen et al. 2022, section 4.3 and its ``TVLoss``) adds the total variation of its factor grids to the
loss: neighbouring cells of a plane or a line should hold similar features, which suppresses the grid-aligned
speckle a few supervising views (or, here, a noisy score) leave on them.
"""

from __future__ import annotations

from torch import Tensor, nn

TENSORF_GRIDS = ("plane_coef", "line_coef")
"""The parameters of nerfstudio's TensorVMEncoding (planes (3, C, R, R), lines (3, C, R, 1)) and
TensorCPEncoding (lines) that hold spatial grids."""


def grid_total_variation(grid: Tensor) -> Tensor:
    """Mean squared difference of neighbouring cells along each of the last two axes, summed over the axes
    (an axis of length 1, a line's width, adds nothing)."""
    total = grid.new_zeros(())
    for dim in (-2, -1):
        if grid.shape[dim] > 1:
            total = total + grid.diff(dim=dim).pow(2).mean()
    return total


def tensorf_total_variation(encoder: nn.Module) -> Tensor | None:
    """Sum of :func:`grid_total_variation` over a TensoRF encoder's planes and lines; None for an encoder
    without them (hash grid, positional encoding)."""
    grids = [getattr(encoder, name) for name in TENSORF_GRIDS if isinstance(getattr(encoder, name, None), Tensor)]
    if not grids:
        return None
    return sum(grid_total_variation(g) for g in grids)
