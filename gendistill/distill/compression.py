"""A smaller UNet cut out of a teacher's: fewer layers per stage, shallower transformers, no mid block, stages
without attention.

The student is a stock ``UNet2DConditionModel`` whose config is the teacher's with three edits, so every
diffusers pipeline loads it: ``layers_per_block`` (per down stage; diffusers gives each decoder stage one layer
more, so removing an encoder layer removes its decoder partner and their skip connection, as BK-SDM does),
``transformer_layers_per_block`` capped at ``max_transformer_depth`` (KOALA shortens SDXL's 10-deep innermost
transformers), ``mid_block_type: None`` (BK-SDM and KOALA-700M remove the mid block) and attention-free block
types for chosen stages (``CrossAttnUpBlock2D`` -> ``UpBlock2D``: same resnets, no transformers).

Initialisation copies the teacher's weights where layers correspond (Kim et al. 2023, "BK-SDM: A Lightweight,
Fast, and Cheap Version of Stable Diffusion"; Lee et al. 2024, "KOALA: Empirical Lessons Toward Memory-Efficient
and Fast Diffusion Models for Text-to-Image Synthesis"): an encoder layer and a transformer block keep their
index (the first ones survive); a decoder stage keeps its first layers and its last one, the one that reads the
stage's input skip. Where a layer's shapes do not fit that partner, the layer of the same index is tried; a
layer with no fitting partner keeps its fresh initialisation (``LayerMap.fresh`` names them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from gendistill.errors import UserError, check_range, key_path

LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.")
TRANSFORMER_BLOCK = re.compile(r"\.transformer_blocks\.(\d+)\.")
PLAIN_BLOCK = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}
"""The attention-free block with the same resnets and samplers."""


@dataclass
class StudentArchitecture:
    """What to remove from the teacher's UNet (every field None/false: an identical copy)."""

    layers_per_block: int | list[int] | None = None
    """Encoder layers (resnet + attention) per down stage, one number for all or one per stage (decoder stages
    get one more each); None: the teacher's. 0 removes a stage's layers, keeping its downsampler."""
    max_transformer_depth: int | None = None
    """Cap on the transformer blocks per attention layer (SDXL: 1, 2, 10 per stage; KOALA shortens the 10)."""
    remove_mid_block: bool = False
    """Drop the mid block (BK-SDM, KOALA-700M)."""
    without_attention: list[str] = field(default_factory=list)
    """Stages whose attention layers go, keeping their resnets (e.g. ``up_blocks.1``: a decoder stage of plain
    resnets; ``down_blocks.i`` and ``up_blocks.i``, any subset)."""

    def check(self, path: str) -> None:
        depths = self.layers_per_block if isinstance(self.layers_per_block, list) else [self.layers_per_block]
        for i, depth in enumerate(d for d in depths if d is not None):
            check_range(f"{key_path(path, 'layers_per_block')}[{i}]", depth, 0)
        if self.max_transformer_depth is not None:
            check_range(key_path(path, "max_transformer_depth"), self.max_transformer_depth, 1)


@dataclass
class LayerMap:
    """Which teacher layer each student layer was initialised from (``down_blocks.1.attentions.0`` ->
    ``down_blocks.1.attentions.0``; transformer blocks too), and the student layers left fresh."""

    teacher_of: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)


def student_config(teacher_config: dict, arch: StudentArchitecture) -> dict:
    """The teacher's UNet config with ``arch``'s removals; a UserError if it asks for more than the teacher has."""
    config = {k: v for k, v in teacher_config.items() if not k.startswith("_")}
    stages = len(config["down_block_types"])
    teacher_layers = _per_stage(config["layers_per_block"], stages)
    if arch.layers_per_block is not None:
        layers = _per_stage(arch.layers_per_block, stages, "recipe.architecture.layers_per_block")
        if any(s > t for s, t in zip(layers, teacher_layers)):
            raise UserError(f"recipe.architecture.layers_per_block {layers} exceeds the teacher's {teacher_layers}")
        widths = config["block_out_channels"]
        for i in range(1, stages):
            if layers[i] == 0 and widths[i] != widths[i - 1]:
                raise UserError(f"recipe.architecture.layers_per_block cannot be 0 for stage {i}: it widens "
                                f"{widths[i - 1]} to {widths[i]} channels, which takes a layer; allowed: >= 1 there")
        config["layers_per_block"] = layers
    if arch.max_transformer_depth is not None:
        depth = _per_stage(config.get("transformer_layers_per_block", 1), stages)
        config["transformer_layers_per_block"] = [min(d, arch.max_transformer_depth) for d in depth]
        if config.get("reverse_transformer_layers_per_block") is not None:
            config["reverse_transformer_layers_per_block"] = [
                [min(d, arch.max_transformer_depth) for d in _per_stage(row, stages + 1)]
                for row in config["reverse_transformer_layers_per_block"]]
    if arch.remove_mid_block:
        config["mid_block_type"] = None
    for stage in arch.without_attention:
        _drop_attention(config, stage)
    return config


def _drop_attention(config: dict, stage: str) -> None:
    """``down_blocks.i`` / ``up_blocks.i`` of ``config`` as its attention-free block type."""
    part, _, index = stage.partition(".")
    key = {"down_blocks": "down_block_types", "up_blocks": "up_block_types"}.get(part)
    where = "recipe.architecture.without_attention"
    stages = len(config.get(key, ())) if key else 0
    if key is None or not index.isdigit() or int(index) >= stages:
        raise UserError(f"{where} names {stage!r}; allowed: down_blocks.i or up_blocks.i with i < "
                        f"{len(config['down_block_types'])}")
    types = list(config[key])
    block = types[int(index)]
    if block not in PLAIN_BLOCK and block not in PLAIN_BLOCK.values():
        raise UserError(f"{where}: {stage} is a {block}, whose attention cannot be removed; allowed: stages of "
                        f"{', '.join(PLAIN_BLOCK)}")
    types[int(index)] = PLAIN_BLOCK.get(block, block)
    config[key] = types


def compressed_unet(teacher: nn.Module, arch: StudentArchitecture) -> tuple[nn.Module, LayerMap]:
    """A student of the teacher's class with ``arch``'s removals, initialised from the teacher's weights
    where layers correspond; on the teacher's device and dtype."""
    student = type(teacher).from_config(student_config(dict(teacher.config), arch))
    layer_map = copy_corresponding_weights(teacher, student)
    parameter = next(teacher.parameters())
    student.to(parameter.device)
    return (student if next(student.parameters()).dtype == parameter.dtype else student.to(parameter.dtype)), layer_map


def copy_corresponding_weights(teacher: nn.Module, student: nn.Module) -> LayerMap:
    """Copy each student layer's weights from its teacher partner (see the module docstring); top-level
    modules (conv_in, embeddings, samplers, norms, conv_out) by name."""
    source = teacher.state_dict()
    counts = _layer_counts(teacher)
    layer_map = LayerMap()
    target = student.state_dict()
    for layer, names in _group_by_layer(target).items():
        partner = _fitting_partner(layer, names, source, target, counts, _layer_counts(student))
        if partner is None:
            layer_map.fresh.append(layer)
            continue
        layer_map.teacher_of[layer] = partner
        for name in names:
            target[name] = source[partner + name[len(layer):]].clone()
    student.load_state_dict(target)
    return layer_map


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _fitting_partner(layer: str, names: list[str], source: dict, target: dict, teacher_counts: dict,
                     student_counts: dict) -> str | None:
    for partner in _candidate_partners(layer, teacher_counts, student_counts):
        keys = [partner + name[len(layer):] for name in names]
        if all(k in source and source[k].shape == target[n].shape for k, n in zip(keys, names)):
            return partner
    return None


def _candidate_partners(layer: str, teacher_counts: dict, student_counts: dict) -> list[str]:
    """Teacher layers that may stand for student ``layer``, best first."""
    match = LAYER.match(layer + ".")
    if match is None:
        return [layer]  # a top-level module, or a whole mid-block layer: same name
    part, stage, kind, index = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
    rest = layer[match.end() - 1:]  # "" or ".transformer_blocks.K" (a block keeps its index)
    n_student, n_teacher = student_counts[(part, stage)], teacher_counts[(part, stage)]
    indices = [index]
    if part == "up_blocks" and index == n_student - 1:
        indices = [n_teacher - 1, index]  # the decoder stage's last layer reads its input skip
    return [f"{part}.{stage}.{kind}.{i}{rest}" for i in dict.fromkeys(indices)]


def _group_by_layer(state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """State-dict keys grouped by the unit that is copied whole: a transformer block, a resnet or attention
    layer's remaining weights, or a top-level module."""
    groups: dict[str, list[str]] = {}
    for name in state:
        groups.setdefault(_layer_of(name), []).append(name)
    return groups


def _layer_of(name: str) -> str:
    match = LAYER.match(name)
    if match is None:
        return name.rsplit(".", 1)[0]  # a top-level or mid-block module, copied by its own name
    block = TRANSFORMER_BLOCK.search(name, match.end() - 1)
    return name[:block.end() - 1] if block else match.group(0)[:-1]


def _layer_counts(unet: nn.Module) -> dict[tuple[str, int], int]:
    counts = {}
    for part in ("down_blocks", "up_blocks"):
        for stage, block in enumerate(getattr(unet, part)):
            counts[(part, stage)] = len(block.resnets)
    return counts


def _per_stage(value, stages: int, where: str | None = None) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != stages:
            raise UserError(f"{where or 'value'} has {len(value)} entries; the teacher has {stages} stages")
        return [int(v) for v in value]
    return [int(value)] * stages
