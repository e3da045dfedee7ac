"""Where a prompt's word lives in the teacher's picture of it: DiffSketcher's attention-map initialisation.

DiffSketcher (Xing et al. 2023, arXiv 2306.14685; code: ximinng/DiffSketcher) places its strokes where the
teacher attends to the object's word while it generates the prompt: one ordinary sampling run records the
cross-attention maps of the text-conditioned half of the CFG batch, averaged over heads, layers (at one
resolution) and steps; the column of the chosen token(s), min-max normalised, is the cross map ``A_cross``.
Optionally the self-attention maps (averaged likewise) give ``A_self``: the first principal component of the
row-centred matrix (its SVD), so that ``M = norm(c A_cross + (1 - c) A_self)`` with ``c = attn_coeff``. Stroke
starts are drawn from ``p_i = softmax(M_i / tau)`` over the pixels where ``M > 0`` (``start_probabilities``).
The reference's optional XDoG edge intersection is not done here.

The map is a plain (H, W) tensor: the strokes scene (``render/``) reads it without knowing diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.backends.attention import AttentionAccess, attention_layers, layer_downsample
from gendistill.backends.generation import GenerationRequest, sample_steps
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import UserError, check_range, key_path


@dataclass
class AttentionInitConfig:
    """How the stroke starts are drawn from the teacher's attention (DiffSketcher's defaults otherwise)."""

    steps: int = 20
    """Sampling steps of the generation whose attention is recorded (DiffSketcher: 100 DDIM steps)."""
    guidance: float = 7.5
    """CFG scale of that generation."""
    words: tuple[str, ...] = ()
    """The prompt's words whose cross-attention columns are averaged; empty: the prompt's last word (the
    object noun of a caption such as "a red cube")."""
    resolution: int = 16
    """Side of the attention maps used (DiffSketcher: 16 on SD's 64x64 latents); the layers whose side is the
    available one nearest to this are averaged."""
    self_resolution: int = 32
    """Side of the self-attention maps used when ``attn_coeff < 1`` (DiffSketcher: 32)."""
    attn_coeff: float = 1.0
    """``c`` in ``M = norm(c A_cross + (1 - c) A_self)``; 1: cross-attention only (DiffSketcher's default)."""
    tau: float = 0.5
    """Softmax temperature of the start distribution over pixels."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "steps"), self.steps, 1)
        check_range(key_path(path, "resolution"), self.resolution, 1)
        check_range(key_path(path, "self_resolution"), self.self_resolution, 1)
        check_range(key_path(path, "attn_coeff"), self.attn_coeff, 0.0, 1.0)
        check_range(key_path(path, "tau"), self.tau, 1e-3)


@dataclass
class AttentionMaps:
    """The maps of one generation, each (h, w) in [0, 1] at its own resolution."""

    cross: Tensor
    """The chosen words' cross-attention, min-max normalised."""
    fused: Tensor
    """``M``, at the cross map's resolution."""
    image: Tensor
    """The generated image, (3, H, W) in [0, 1]."""
    self_map: Tensor | None = None
    """The self-attention's first principal component (None when ``attn_coeff == 1``)."""


def token_positions(tokenizer, prompt: str, words: tuple[str, ...]) -> list[int]:
    """Indices in the prompt's token sequence (start token at 0) of every token of each of ``words``; a word
    that is not in the prompt is a UserError."""
    ids = tokenizer(prompt).input_ids
    positions: list[int] = []
    for word in words:
        piece = tokenizer(word, add_special_tokens=False).input_ids
        found = [i for i in range(len(ids) - len(piece) + 1) if piece and ids[i:i + len(piece)] == piece]
        if not found:
            raise UserError(f"the word {word!r} is not in the prompt {prompt!r}; name one of its words")
        positions.extend(range(found[-1], found[-1] + len(piece)))
    return positions


def chosen_words(prompt: str, words: tuple[str, ...]) -> tuple[str, ...]:
    """``words``, or the prompt's last word (stripped of punctuation) when there are none."""
    if words:
        return tuple(words)
    last = prompt.strip().split()[-1].strip(".,;:!?\"'") if prompt.strip() else ""
    if not last:
        raise UserError("the prompt is empty; describe the object, e.g. 'a red cube'")
    return (last,)


def normalise(x: Tensor) -> Tensor:
    """Min-max normalised to [0, 1] (a constant map becomes zeros)."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def layer_sides(unet, kind: str, latent_side: int) -> dict[str, int]:
    """The side of the square map each ``kind`` attention layer of a diffusers UNet runs at: the latent's side
    over the layer's downsample factor (``backends.attention.layer_downsample``)."""
    return {name: max(1, latent_side // layer_downsample(unet, name)) for name in attention_layers(unet, kind)}


def layers_nearest(unet, kind: str, side: int, latent_side: int) -> list[str]:
    """The ``kind`` attention layers at the available side nearest to ``side`` (the larger on a tie)."""
    sides = layer_sides(unet, kind, latent_side)
    if not sides:
        raise UserError(f"the model's UNet has no {kind}-attention layers; use the random stroke init")
    best = min(set(sides.values()), key=lambda s: (abs(s - side), -s))
    return [name for name, s in sides.items() if s == best]


class _Accumulator:
    """Running sums of the conditional half's attention probs, per resolution, over heads, layers and steps."""

    def __init__(self, batch: int):
        self.batch, self.sums, self.counts = batch, {}, {}

    def add(self, records: dict) -> None:
        for name, record in records.items():
            probs = record.probs.float()
            if probs.shape[0] == 2 * self.batch:  # CFG: uncond first, cond second
                probs = probs[self.batch:]
            kind = "cross" if name.endswith("attn2") else "self"
            self.sums[kind] = self.sums.get(kind, 0) + probs.mean(dim=(0, 1))  # (query tokens, key tokens)
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def mean(self, kind: str) -> Tensor:
        return self.sums[kind] / self.counts[kind]


@dataclass
class RecordedAttention:
    """A generation's attention probabilities of the text-conditioned half, averaged over heads, layers, steps."""

    cross: Tensor
    """(pixels, text tokens) at the cross-attention resolution; each row sums to 1."""
    self_probs: Tensor | None
    """(pixels, pixels) at the self-attention resolution (None when not recorded)."""
    image: Tensor
    """The generated image, (3, H, W) in [0, 1]."""


@torch.no_grad()
def record_attention(model: TextToImageModel, prompt: str, config: AttentionInitConfig, seed: int = 0,
                     with_self: bool = False) -> RecordedAttention:
    """Generate ``prompt`` once with the model's own sampler (``config.steps``, CFG ``config.guidance``), keeping
    the mean attention probabilities of the last network call of each step. Needs a UNet pipeline."""
    if model.family != "vp":
        raise UserError("the attention init reads a UNet's attention (Stable Diffusion-style); use the random init")
    unet, latent_side = model.network, model.latent_shape(1)[-1]
    layers = layers_nearest(unet, "cross", config.resolution, latent_side)
    if with_self:
        layers += layers_nearest(unet, "self", config.self_resolution, latent_side)
    request = GenerationRequest(prompt=prompt, steps=config.steps, guidance=config.guidance, seed=seed)
    sums, last = _Accumulator(1), None
    with AttentionAccess(unet, kinds=("self", "cross"), record=("probs",), layers=layers) as access:
        run = sample_steps(model, request)
        for last in run.steps:
            sums.add(access.records)
            access.records.clear()
    image = model.decode(run.latents(last))[0].float().cpu()
    return RecordedAttention(sums.mean("cross").cpu(), sums.mean("self").cpu() if with_self else None, image)


def fuse_maps(recorded: RecordedAttention, positions: list[int], attn_coeff: float = 1.0) -> AttentionMaps:
    """DiffSketcher's map: the mean of the ``positions`` columns of the cross-attention, normalised; fused with
    the self-attention's first principal component when ``attn_coeff < 1``."""
    cross = normalise(_square(recorded.cross[:, positions].mean(dim=1)))
    use_self = attn_coeff < 1 and recorded.self_probs is not None
    self_map = _principal_map(recorded.self_probs, cross) if use_self else None
    fused = cross if self_map is None else normalise(
        attn_coeff * cross + (1 - attn_coeff) * _resize(self_map, cross.shape[-1]))
    return AttentionMaps(cross, fused, recorded.image, self_map)


def attention_maps(model: TextToImageModel, prompt: str, config: AttentionInitConfig, seed: int = 0) -> AttentionMaps:
    """The maps of ``prompt``'s generation (see the module docstring): ``record_attention`` then ``fuse_maps``
    on the tokens of ``config.words`` (default: the prompt's last word)."""
    positions = token_positions(model.pipe.tokenizer, prompt, chosen_words(prompt, config.words))
    recorded = record_attention(model, prompt, config, seed, with_self=config.attn_coeff < 1)
    return fuse_maps(recorded, positions, config.attn_coeff)


def _square(column: Tensor) -> Tensor:
    """A (tokens,) column as its (side, side) map."""
    side = int(round(column.numel() ** 0.5))
    return column.reshape(side, side).cpu()


def _resize(x: Tensor, side: int) -> Tensor:
    """A (h, w) map resized to (side, side), bilinear."""
    if x.shape[-1] == side:
        return x
    return F.interpolate(x[None, None], (side, side), mode="bilinear", align_corners=False)[0, 0]


def _principal_map(self_probs: Tensor, cross: Tensor) -> Tensor:
    """The first principal component of the row-centred self-attention matrix, as a map in [0, 1], signed so
    that it agrees with the cross map (an SVD's sign is arbitrary)."""
    centred = self_probs - self_probs.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    component = _square(vh[0].float())
    if (normalise(component) * _resize(cross, component.shape[-1])).sum() < \
            ((1 - normalise(component)) * _resize(cross, component.shape[-1])).sum():
        component = -component
    return normalise(component)


def start_probabilities(fused: Tensor, size: int, tau: float = 0.5) -> Tensor:
    """DiffSketcher's start distribution on a ``size`` x ``size`` canvas: ``softmax(M / tau)`` over the pixels
    where the (bilinearly upsampled) map ``M`` is positive, zero elsewhere; (size, size), summing to 1."""
    m = _resize(fused.float(), size).clamp(0, 1)
    logits = torch.where(m > 0, m / tau, torch.full_like(m, float("-inf")))
    if not torch.isfinite(logits).any():  # an all-zero map: uniform
        logits = torch.zeros_like(m)
    return torch.softmax(logits.flatten(), dim=0).view(size, size)
