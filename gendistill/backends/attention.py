"""Read and edit a diffusers UNet's attention: queries, keys, values, maps and outputs of its self- and
cross-attention layers, through diffusers' own attention-processor mechanism.

Inside ``with AttentionAccess(unet, ...) as access:`` every chosen ``Attention`` layer runs an
``AttentionProcessor`` that computes what diffusers' ``AttnProcessor`` computes (tested equal to the stock
processors on SD 1.5- and SDXL-shaped UNets), records the tensors asked for in ``access.records[layer]`` and may
replace the keys and values before attending (``edit``). On exit the UNet gets its own processors back.

What uses it: LUSD's editing mask (the target token's cross-attention map, spread by self-attention), Attention
Distillation's loss (a layer's output against attention with a reference image's keys and values: ``edit``
swaps them in) and DiffSketcher's stroke initialisation (where the prompt's tokens attend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

AttentionKind = Literal["self", "cross"]
RECORDABLE = ("query", "key", "value", "probs", "output")
KIND_OF = {"attn1": "self", "attn2": "cross"}
"""diffusers' transformer blocks name their self-attention attn1 and their cross-attention attn2."""

KeyValueEdit = Callable[[str, Tensor, Tensor], tuple[Tensor, Tensor]]
"""(layer name, keys, values) -> (keys, values); all (B, heads, tokens, head_dim)."""


@dataclass
class AttentionRecord:
    """What one layer saw in its last call; fields not asked for stay None. Per head: (B, heads, tokens, dim)."""

    query: Tensor | None = None
    key: Tensor | None = None
    """The keys attended to (after any edit)."""
    value: Tensor | None = None
    probs: Tensor | None = None
    """The attention map softmax(q k^T * scale), (B, heads, query tokens, key tokens)."""
    output: Tensor | None = None
    """The layer's output (after its output projection), in the shape of its input."""


@dataclass
class AttentionProcessor:
    """A diffusers attention processor for one layer that records and may edit (see the module docstring)."""

    name: str
    records: dict[str, AttentionRecord]
    record: tuple[str, ...] = ()
    edit: KeyValueEdit | None = None

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial is not None:
            b, c, h, w = spatial
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = (_split_heads(t, attn.heads) for t in (attn.to_q(hidden_states), attn.to_k(context),
                                                                   attn.to_v(context)))
        if getattr(attn, "norm_q", None) is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if self.edit is not None:
            key, value = self.edit(self.name, key, value)
        mask = _head_mask(attn, attention_mask, key.shape[2], query.shape[0])
        out, probs = _attend(query, key, value, mask, attn.scale, "probs" in self.record)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
        if spatial is not None:
            out = out.transpose(1, 2).reshape(spatial)
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        self._keep(query=query, key=key, value=value, probs=probs, output=out)
        return out

    def _keep(self, **tensors: Tensor | None) -> None:
        if self.record:
            self.records[self.name] = AttentionRecord(**{k: (v if k in self.record else None)
                                                         for k, v in tensors.items()})


@dataclass
class AttentionAccess:
    """Context manager: the chosen attention layers of ``unet`` run ``AttentionProcessor``s.

    ``kinds`` picks self- and/or cross-attention; ``layers`` (names as ``attention_layers`` gives them) narrows
    further; ``record`` names the tensors kept per layer (of ``RECORDABLE``); ``edit`` replaces keys and values."""

    unet: nn.Module
    kinds: tuple[AttentionKind, ...] = ("self", "cross")
    record: tuple[str, ...] = ("probs",)
    edit: KeyValueEdit | None = None
    layers: list[str] | None = None
    records: dict[str, AttentionRecord] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.record) - set(RECORDABLE)
        if unknown:
            raise ValueError(f"cannot record {sorted(unknown)}; choose from {', '.join(RECORDABLE)}")
        self._saved: dict | None = None

    def __enter__(self) -> AttentionAccess:
        self._saved = dict(self.unet.attn_processors)
        chosen = set(self.layers) if self.layers is not None else None
        processors = {}
        for key, original in self._saved.items():
            name = key.removesuffix(".processor")
            wanted = KIND_OF.get(name.rsplit(".", 1)[-1]) in self.kinds and (chosen is None or name in chosen)
            processors[key] = AttentionProcessor(name, self.records, self.record, self.edit) if wanted else original
        self.unet.set_attn_processor(processors)
        return self

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(self._saved)
        self._saved = None


def attention_layers(unet: nn.Module, kind: AttentionKind | None = None) -> list[str]:
    """Names of the UNet's attention layers (``...transformer_blocks.0.attn1``), of one kind if given."""
    names = [key.removesuffix(".processor") for key in unet.attn_processors]
    return [n for n in names if kind is None or KIND_OF.get(n.rsplit(".", 1)[-1]) == kind]


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _head_mask(attn: nn.Module, mask: Tensor | None, key_tokens: int, batch: int) -> Tensor | None:
    """diffusers' prepared additive mask, (B * heads, 1 or Nq, Nk), as (B, heads, 1 or Nq, Nk)."""
    if mask is None:
        return None
    mask = attn.prepare_attention_mask(mask, key_tokens, batch)
    return mask.view(batch, attn.heads, -1, mask.shape[-1])


def _attend(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float,
            with_probs: bool) -> tuple[Tensor, Tensor | None]:
    """(attention output, the map when asked for); the map is computed explicitly only then."""
    if not with_probs:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale), None
    scores = (query @ key.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores + mask.float()
    probs = scores.softmax(dim=-1).to(query.dtype)
    return probs @ value, probs


def layer_downsample(unet: nn.Module, name: str) -> int:
    """How many times smaller than the latent the layer's feature map is (1, 2, 4, ...), read from its place in
    a diffusers UNet: ``down_blocks.i`` works at 2**i, ``up_blocks.i`` at 2**(n-1-i), the mid block at 2**(n-1),
    with n the number of down blocks (each but the last halves the resolution)."""
    levels = len(unet.config.down_block_types)
    block, _, rest = name.partition(".")
    if block == "mid_block":
        return 2 ** (levels - 1)
    index = int(rest.partition(".")[0])
    return 2 ** index if block == "down_blocks" else 2 ** (levels - 1 - index)


def layers_at(unet: nn.Module, kind: AttentionKind, downsample: int) -> list[str]:
    """The attention layers of ``kind`` whose feature map is ``downsample`` times smaller than the latent."""
    return [n for n in attention_layers(unet, kind) if layer_downsample(unet, n) == downsample]


def nearest_downsample(unet: nn.Module, kind: AttentionKind, wanted: int) -> int:
    """The downsample factor of ``kind`` layers closest to ``wanted`` (in octaves; a tie goes to the finer map),
    so a setting made for one UNet (SD 1.5's 4) still finds layers in another (a two-level UNet has 1 and 2)."""
    import math

    have = sorted({layer_downsample(unet, n) for n in attention_layers(unet, kind)})
    if not have:
        raise ValueError(f"the UNet has no {kind}-attention layers")
    return min(have, key=lambda d: (abs(math.log2(d) - math.log2(wanted)), d))
