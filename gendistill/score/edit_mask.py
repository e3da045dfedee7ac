"""LUSD's attention-based spatial regularisation, in plain tensors: where an edit may change the image.

LUSD (Localized Update Score Distillation, arXiv 2503.11054; reference code sincostanx/LUSD,
``colocation/editing_pipeline.py``): the target token's cross-attention map ``c`` at a coarse resolution is
carried to a finer one, spread by that resolution's self-attention ``S`` (``S @ vec(c)``: each pixel takes the
attention-weighted mean of ``c`` over the pixels it attends to), brought to the latent's size and min-max
normalised. The map is smoothed over steps (an EMA) and applied progressively: ``beta * M + (1 - beta)`` with
``beta`` rising 0 -> 1 over the run, so early steps edit freely and late ones only inside the object.

Also here: which words of the target prompt the mask follows (the edited phrase's head) and where they sit in
the token sequence.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor

WORD = re.compile(r"[a-z0-9']+")


def edited_word(source: str, target: str) -> str:
    """The word of ``target`` the edit is about: the common ending of the two prompts dropped, the last word
    that differs from the source by position; when only the prompt's last word follows it, that last word (an
    adjective's noun: "a red cube" -> "a blue cube" gives "cube", as LUSD extends an edit to its noun; LUSD
    tags nouns with NLTK, which gendistill does not depend on: ``mask_word`` names the word instead)."""
    src, tgt = WORD.findall(source.lower()), WORD.findall(target.lower())
    if not tgt:
        raise ValueError("the target prompt has no words")
    common = 0
    while common < min(len(src), len(tgt)) - 1 and src[-1 - common] == tgt[-1 - common]:
        common += 1
    head = tgt[:len(tgt) - common]
    differing = [i for i, w in enumerate(head) if i >= len(src) or src[i] != w]
    if not differing:
        return tgt[-1]
    last = differing[-1]
    return tgt[-1] if last == len(tgt) - 2 else tgt[last]


def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions of ``word``'s last sub-token in ``prompt``'s token sequence (start token at 0), every
    occurrence; a ValueError when the word is not in the prompt."""
    ids = list(tokenizer(prompt).input_ids)
    piece = list(tokenizer(word, add_special_tokens=False).input_ids)
    found = [i + len(piece) - 1 for i in range(len(ids) - len(piece) + 1) if ids[i:i + len(piece)] == piece]
    if not piece or not found:
        raise ValueError(f"{word!r} is not a word of the prompt {prompt!r}")
    return found


def _square(tokens: Tensor) -> Tensor:
    """(..., N) with N a square number, as (..., side, side)."""
    side = int(round(tokens.shape[-1] ** 0.5))
    if side * side != tokens.shape[-1]:
        raise ValueError(f"{tokens.shape[-1]} query tokens are not a square map")
    return tokens.reshape(*tokens.shape[:-1], side, side)


def token_map(cross_probs: list[Tensor], positions: list[int]) -> Tensor:
    """The tokens' cross-attention map, (B, s, s): each layer's (B, heads, s*s, tokens) averaged over heads
    and layers (all at one resolution), then over the positions."""
    maps = torch.stack([p.float().mean(dim=1)[..., positions].mean(dim=-1) for p in cross_probs]).mean(dim=0)
    return _square(maps)


def spread_by_self_attention(cmap: Tensor, self_probs: list[Tensor], power: int = 1) -> Tensor:
    """``S^power @ vec(c)`` at the self-attention's resolution: (B, s, s) -> (B, r, r), ``S`` (B, r*r, r*r) the
    layers' maps averaged over heads and layers; ``c`` is first resized (bicubic) to r x r. ``power`` 0 keeps
    the resized map (LUSD's reference code takes ``matrix_power(S, 1)``)."""
    s = torch.stack([p.float().mean(dim=1) for p in self_probs]).mean(dim=0)
    side = int(round(s.shape[-1] ** 0.5))
    c = F.interpolate(cmap[:, None], (side, side), mode="bicubic", align_corners=False)[:, 0]
    return _square((torch.linalg.matrix_power(s, power) @ c.flatten(1)[..., None])[..., 0])


def normalised_mask(amap: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, r, r) -> (B, 1, h, w): bicubic to the latent's size, min-max to [0, 1] per image."""
    up = F.interpolate(amap[:, None], size, mode="bicubic", align_corners=False)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    return ((up - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


def progressive(mask: Tensor, step: int, total_steps: int) -> Tensor:
    """``beta * M + (1 - beta)``, ``beta = step / (total_steps - 1)``: all ones at the first step, M at the last."""
    beta = step / max(1, total_steps - 1)
    return beta * mask + (1 - beta)


def direction_scale(step: int, total_steps: int, high: float, low: float, speed: float) -> float:
    """LUSD's normalised step size: ``(1 - sigmoid(x)) (high - low) + low``, x from -speed to +speed over the
    run (a smooth fall from about ``high`` to about ``low``)."""
    x = -speed + 2 * speed * step / max(1, total_steps - 1)
    return (1 - 1 / (1 + torch.exp(torch.tensor(-x)).item())) * (high - low) + low
