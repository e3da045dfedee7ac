"""The denoiser contract every model in gendistill is adapted to.

Canonical math (DESIGN.md §2): ``x = x0 + sigma * eps`` and a denoiser ``D(x, sigma, cond) -> x0_hat``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class TextCondition:
    """What a text-conditioned network sees of the prompt, batched along dim 0."""

    embeds: Tensor
    """Per-token hidden states, (B, L, D): cross-attention input."""
    pooled: Tensor | None = None
    """Pooled text embedding, (B, D'): SDXL ``text_embeds``, SD3 ``pooled_projections``."""
    time_ids: Tensor | None = None
    """SDXL micro-conditioning (original size, crop, target size), (B, 6)."""

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def cat(self, other: TextCondition) -> TextCondition:
        """Stack two conditions along the batch (e.g. unconditional then conditional for CFG)."""
        return TextCondition(*(_cat_optional(a, b) for a, b in zip(_fields(self), _fields(other))))

    @staticmethod
    def concat(conds: list[TextCondition]) -> TextCondition:
        """Stack many conditions along the batch."""
        out = conds[0]
        for c in conds[1:]:
            out = out.cat(c)
        return out

    def take(self, index: Tensor) -> TextCondition:
        """Rows ``index`` (a 1-D index tensor) of every field."""
        return TextCondition(*(None if t is None else t[index.to(t.device)] for t in _fields(self)))

    def row(self, i: int) -> TextCondition:
        """Row ``i`` as a batch of one."""
        return TextCondition(*(None if t is None else t[i:i + 1] for t in _fields(self)))

    def repeat(self, n: int) -> TextCondition:
        """Repeat each row ``n`` times (row i becomes rows i*n .. i*n+n-1), like ``num_images_per_prompt``."""
        return TextCondition(*(None if t is None else t.repeat_interleave(n, dim=0) for t in _fields(self)))

    def to(self, device=None, dtype=None) -> TextCondition:
        return replace(self, **{k: None if v is None else v.to(device=device, dtype=dtype)
                                for k, v in zip(("embeds", "pooled", "time_ids"), _fields(self))})


def _fields(c: TextCondition):
    return (c.embeds, c.pooled, c.time_ids)


def _cat_optional(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot batch a condition that has a field with one that lacks it")
    return torch.cat([a, b])


class Denoiser(Protocol):
    """``D(x, sigma, cond) -> x0_hat``: the posterior-mean estimate of clean data.

    ``x`` is (B, ...) in canonical units (``x0 + sigma * eps``); ``sigma`` is a scalar tensor or (B,).
    ``cond`` is whatever the model is conditioned on (a TextCondition, class labels, or None).
    """

    def __call__(self, x: Tensor, sigma: Tensor, cond=None) -> Tensor: ...


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a scalar or (B,) sigma to (B, 1, 1, ...) so it multiplies ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))
