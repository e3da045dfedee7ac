"""Feature distillation sites of a UNet and forward hooks that read them (KOALA, BK-SDM).

A site is a pair of modules, one in the student and its partner in the teacher, whose outputs have the same
shape: every transformer block's self-attention (``attn1``, KOALA's choice) or cross-attention (``attn2``), or
every whole stage's output (``down_blocks.i``, ``mid_block``, ``up_blocks.i``: BK-SDM's block-level feature loss).
The hooks are plain ``register_forward_hook``s, so the same code reads SD 1.5 and SDXL UNets (any diffusers
``UNet2DConditionModel``), and the network's forward itself is untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from gendistill.distill.compression import LayerMap

FeatureSite = Literal["self_attention", "cross_attention", "block", "none"]
FEATURE_SITES = ("self_attention", "cross_attention", "block", "none")
ATTENTION_OF = {"self_attention": "attn1", "cross_attention": "attn2"}
TRANSFORMER_BLOCK = re.compile(r"\.transformer_blocks\.\d+$")


@dataclass(frozen=True)
class SitePair:
    student: str
    teacher: str


def feature_sites(student: nn.Module, teacher: nn.Module, layer_map: LayerMap, site: FeatureSite) -> list[SitePair]:
    """The (student module, teacher module) name pairs read at ``site``; none for "none"."""
    if site == "none":
        return []
    if site == "block":
        teacher_names = dict(teacher.named_children())
        blocks = [f"down_blocks.{i}" for i in range(len(student.down_blocks))]
        blocks += ["mid_block"] if student.mid_block is not None and teacher.mid_block is not None else []
        blocks += [f"up_blocks.{i}" for i in range(len(student.up_blocks))]
        return [SitePair(b, b) for b in blocks if b.split(".")[0] in teacher_names]
    if site not in ATTENTION_OF:
        raise ValueError(f"unknown feature site {site!r}; choose one of {', '.join(FEATURE_SITES)}")
    attention = ATTENTION_OF[site]
    teacher_modules = dict(teacher.named_modules())
    pairs = []
    for name, _ in student.named_modules():
        if TRANSFORMER_BLOCK.search(name):
            partner = layer_map.teacher_of.get(name, name)  # mid-block modules keep their names
            if f"{partner}.{attention}" in teacher_modules:
                pairs.append(SitePair(f"{name}.{attention}", f"{partner}.{attention}"))
    return pairs


class FeatureTap:
    """Records the outputs of named submodules of one network during its forward passes."""

    def __init__(self, network: nn.Module, names: list[str]):
        self.network, self.names = network, names
        self.features: dict[str, Tensor] = {}

    @contextmanager
    def reading(self) -> Iterator[dict[str, Tensor]]:
        """Hooks on while inside; yields the dict the outputs land in (cleared on entry)."""
        self.features.clear()
        modules = dict(self.network.named_modules())
        handles = [modules[name].register_forward_hook(self._recorder(name)) for name in self.names]
        try:
            yield self.features
        finally:
            for handle in handles:
                handle.remove()

    def _recorder(self, name: str):
        def record(module, inputs, output):
            self.features[name] = output[0] if isinstance(output, tuple) else output
        return record


def feature_loss(student_features: dict[str, Tensor], teacher_features: dict[str, Tensor],
                 pairs: list[SitePair]) -> Tensor | None:
    """Mean over sites of the mean squared difference between partner features (None without sites)."""
    if not pairs:
        return None
    total = 0.0
    for pair in pairs:
        s, t = student_features[pair.student], teacher_features[pair.teacher].detach()
        total = total + (s.float() - t.float()).pow(2).mean()
    return total / len(pairs)
