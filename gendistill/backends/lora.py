"""LoRA on diffusers UNets with peft: LCM-LoRA students, and the fake scores of DMD2 and VSD.

LCM-LoRA (Luo et al. 2023, "LCM-LoRA: A Universal Stable-Diffusion Acceleration Module"):
The student is a copy of the teacher UNet with peft LoRA adapters injected in place (diffusers'
``add_adapter``), so its forward signature, ``config`` and the denoiser adapters are those of a plain UNet.
Only the adapters train. Two ways out:

- ``save_lora``: a ``pytorch_lora_weights.safetensors`` that stock ``pipe.load_lora_weights(folder)`` applies to
  the TEACHER pipeline, giving the trained student exactly (rank and alpha travel in the file's metadata);
- ``merge_lora``: a plain ``UNet2DConditionModel`` with the adapters folded into the weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

LCM_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)
"""The modules LCM-LoRA adapts: attention and feed-forward projections, and also the resnet convolutions,
resamplers and time-embedding projections (diffusers' ``train_lcm_distill_lora_*`` scripts). The convolutions
matter: a few-step student must change how noise levels are handled, not only what attends to what."""

ADAPTER = "default"
"""peft's adapter name for the student's one adapter."""

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
"""The file name diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` looks for."""


def lora_student(teacher_unet: nn.Module, rank: int, alpha: float | None = None,
                 targets: tuple[str, ...] = LCM_LORA_TARGETS) -> nn.Module:
    """A copy of ``teacher_unet`` with rank-``rank`` LoRA adapters on ``targets``; only the adapters train.

    The adapters start as peft's default (A random, B zero), so the student starts equal to the teacher.
    ``alpha`` (None: equal to ``rank``) sets the adapters' scale ``alpha / rank``.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    student = copy.deepcopy(teacher_unet).requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=list(targets),
                        lora_dropout=0.0, init_lora_weights=True)
    student.add_adapter(config, adapter_name=ADAPTER)
    mark_only_lora_trainable(student)
    return student


def is_lora_parameter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def has_lora(unet: nn.Module) -> bool:
    return any(is_lora_parameter(name) for name, _ in unet.named_parameters())


def mark_only_lora_trainable(unet: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the LoRA adapters; return the adapters' parameters (the optimiser's list)."""
    trainable = []
    for name, param in unet.named_parameters():
        param.requires_grad_(is_lora_parameter(name))
        if param.requires_grad:
            trainable.append(param)
    if not trainable:
        raise ValueError("this UNet has no LoRA adapters (build it with lora_student)")
    return trainable


def lora_state_dict(student_unet: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights in peft's key format (``...to_q.lora_A.weight``), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(student_unet, adapter_name=ADAPTER)
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_lora(student_unet: nn.Module, out_dir: str | Path, pipeline_class: type | None = None) -> Path:
    """Write the student's adapters where ``StableDiffusionPipeline.load_lora_weights(out_dir)`` finds them
    (written by ``pipeline_class.save_lora_weights``: the teacher pipeline's class, StableDiffusionPipeline if
    None; the UNet keys are the same for Stable Diffusion 1.x/2.x and XL).

    Two details make the loaded LoRA equal the trained one:

    - the adapter's LoraConfig (rank, ``lora_alpha``, targets) is stored as the file's adapter metadata, so
      diffusers rebuilds the same ``alpha / rank`` scale instead of assuming alpha = rank;
    - the keys stay in peft's format. ``convert_state_dict_to_diffusers`` renames only the attention
      projections (``to_q.lora.down``) and leaves conv/ff/proj keys as ``lora_A``; on diffusers 0.42
      ``load_lora_weights`` decides the format from the first key of such a mixed dict and silently drops
      the others. Unconverted peft keys are what ``UNet2DConditionModel.save_lora_adapter`` writes, and
      what the loader takes as they are.
    """
    from diffusers import StableDiffusionPipeline

    metadata = student_unet.peft_config[ADAPTER].to_dict()
    writer = pipeline_class or StableDiffusionPipeline
    writer.save_lora_weights(out_dir, unet_lora_layers=lora_state_dict(student_unet),
                             unet_lora_adapter_metadata=metadata)
    return Path(out_dir) / LORA_WEIGHTS_FILE


def merge_lora(student_unet: nn.Module) -> nn.Module:
    """A plain copy of the student's UNet class with the adapters folded into its weights (the student
    itself is untouched); its state dict has the teacher's keys, so ``save_pretrained`` writes a full UNet."""
    merged = copy.deepcopy(student_unet)
    merged.fuse_lora(lora_scale=1.0)
    merged.unload_lora()
    return merged.eval().requires_grad_(False)


ATTENTION_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
"""The attention projections of diffusers' UNets, where the fake score's LoRA goes."""


def make_fake_score(teacher_unet: nn.Module, lora_rank: int) -> nn.Module:
    """The fake-score network: a trainable copy of the teacher, or a frozen copy with LoRA adapters on its
    attention projections (``lora_B`` starts at zero, so either way it starts equal to the teacher)."""
    fake = copy.deepcopy(teacher_unet).train()
    if lora_rank == 0:
        return fake.requires_grad_(True)
    from peft import LoraConfig, inject_adapter_in_model

    fake.requires_grad_(False)
    config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=ATTENTION_LORA_TARGETS,
                        init_lora_weights=True)
    fake = inject_adapter_in_model(config, fake)
    for name, p in fake.named_parameters():
        p.requires_grad_("lora_" in name)
    return fake


def apply_lora_file(pipe, path: str | Path, scale: float = 1.0):
    """Load a diffusers LoRA file or folder (``pytorch_lora_weights.safetensors``; a shipped name such as
    ``shapes-lcm-lora`` works) onto ``pipe`` with stock ``load_lora_weights``, and fuse it at ``scale`` (a slider's
    strength); the pipeline keeps plain weights afterwards. Returns ``pipe``."""
    from gendistill.errors import UserError, first_line
    from gendistill.shipped import resolve_model_name

    source = resolve_model_name(str(path))
    try:
        pipe.load_lora_weights(source)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"could not load a LoRA from {str(path)!r}: {first_line(err)}") from None
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    return pipe
