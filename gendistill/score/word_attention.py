"""Where in an image a text-to-image model looks for one word of its prompt: the word's cross-attention map.

GSEditPro (Sun et al. 2024, arXiv 2411.10033, Sec. 3.2) localises an edit from the T2I model's cross-attention
maps of the edited word on renders of the scene: each render is encoded, noised at a moderate timestep and
denoised once under the prompt while the attention is recorded; the word's map, averaged over heads and the
chosen layers, is brought to the render's size and normalised to [0, 1]. The pieces are LUSD's mask's
(``edit_mask``: ``token_positions``, ``token_map``, ``normalised_mask``) without its self-attention spreading.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gendistill.backends.attention import AttentionAccess, layers_at, nearest_downsample
from gendistill.diffusion.denoiser import expand_sigma
from gendistill.diffusion.timesteps import timestep_index
from gendistill.errors import UserError
from gendistill.score.base import randn
from gendistill.score.edit_mask import normalised_mask, token_map, token_positions
from gendistill.score.teacher import Teacher


def cross_layers(teacher: Teacher, downsample: int) -> list[str]:
    """The cross-attention layers ``downsample`` times smaller than the latent, or the nearest the model has;
    a one-line UserError for a model without cross-attention."""
    unet = teacher.model.network
    try:
        return layers_at(unet, "cross", nearest_downsample(unet, "cross", downsample))
    except ValueError as err:
        raise UserError(f"{err}: attention-based localisation needs cross-attention layers") from None


def word_positions(teacher: Teacher, prompt: str, word: str) -> list[int]:
    """Where ``word`` sits in ``prompt``'s tokens; a one-line UserError when it is not a word of it."""
    try:
        return token_positions(teacher.model.pipe.tokenizer, prompt, word)
    except ValueError as err:
        raise UserError(f"--target {err}; give a word of the prompt") from None


@torch.no_grad()
def word_attention_maps(teacher: Teacher, images: Tensor, prompt: str, word: str, t_fraction: float,
                        layers: list[str], generator: torch.Generator) -> Tensor:
    """The cross-attention map of ``word`` on each image (B, 3, H, W) in [0, 1], as (B, 1, H, W) in [0, 1]:
    the images' latents noised at timestep ``t_fraction * T`` (noise from ``generator``) and denoised once
    under ``prompt`` with ``layers``' maps recorded (module docstring)."""
    positions = word_positions(teacher, prompt, word)
    z = teacher.encode(images)
    t = timestep_index(t_fraction, teacher.num_train_timesteps)
    sigma = teacher.train_sigmas[t].to(z).expand(z.shape[0])
    x = z + expand_sigma(sigma, z) * randn(z.shape, generator, z)
    with AttentionAccess(teacher.model.network, kinds=("cross",), record=("probs",), layers=layers) as access:
        teacher.denoiser()(x, sigma, teacher.conditions([prompt] * z.shape[0]))
    cmap = token_map([access.records[name].probs for name in layers], positions)
    return normalised_mask(cmap, tuple(images.shape[-2:]))
