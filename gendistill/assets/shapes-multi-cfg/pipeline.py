"""Stable Diffusion with a multi-CFG student: the prompt's guidance AND a negative prompt's guidance in ONE UNet
pass per step (how a ``gendistill.distill.multi_cfg`` student ships). gendistill copies this file verbatim into
every exported folder as ``pipeline.py`` and names its class in ``model_index.json``, so stock diffusers loads the
folder with

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe(prompt, negative_prompt="blurry", guidance_scale=3.0, negative_guidance_scale=1.0)

It therefore imports only torch and diffusers.

The student replaces the teacher's three passes (Zhou et al. 2024, "FADA: Fast Diffusion Avatar Synthesis with
Mixed-Supervised Multi-CFG Distillation", arXiv 2412.16915)
``x0_u + w_c (x0_c - x0_u) - w_n (x0_n - x0_u)`` by one. Every component is a stock class:

- the condition is the prompt's text encoding followed, along the sequence axis, by the encoding of
  ``"<neg> " + negative_prompt``; ``<neg>`` is a token added to the CLIPTokenizer with a learnt row of the text
  encoder's token embeddings (CLIP is causal, so every negative token after it carries the marker);
- the scales reach the UNet as ``timestep_cond`` = [emb(w_c - 1), emb(w_n)] (diffusers' guidance-scale
  embedding of each, ``time_cond_proj_dim`` = twice the width), projected by the UNet's own ``cond_proj``.

``StableDiffusionPipeline`` makes no CFG batch for a UNet with ``time_cond_proj_dim`` and asks
``get_guidance_scale_embedding`` for the ``timestep_cond``; this class answers with the two-scale embedding.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

NEGATIVE_TOKEN = "<neg>"


def scale_embedding(w: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """diffusers' guidance-scale embedding of ``w`` (already minus 1, as pipelines pass it), (len(w), dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = (w.to(dtype) * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 == 1 else emb


def two_scale_embedding(cond_scale: torch.Tensor, negative_scale: torch.Tensor, dim: int,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The student's ``timestep_cond``: [emb(w_c - 1), emb(w_n)] (each ``dim // 2`` wide), one row per scale
    pair. ``w_n`` is embedded as ``(w_n + 1) - 1``: 0 (no negative guidance) is the embedding of zero."""
    half = dim // 2
    return torch.cat([scale_embedding(cond_scale.float() - 1, half, dtype),
                      scale_embedding(negative_scale.float(), half, dtype)], dim=1)


def negative_text(negative_prompt: str, token: str = NEGATIVE_TOKEN) -> str:
    """What the student's text encoder reads for a negative prompt (the empty one included)."""
    return f"{token} {negative_prompt}".rstrip()


class MultiCFGPipeline(StableDiffusionPipeline):
    """``StableDiffusionPipeline`` whose UNet was distilled to apply prompt guidance ``guidance_scale`` and negative
    guidance ``negative_guidance_scale`` in one pass (no CFG batch)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 image_encoder=None, requires_safety_checker: bool = False, default_guidance_scale: float = 2.0,
                 negative_token: str = NEGATIVE_TOKEN):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder, requires_safety_checker)
        self.register_to_config(default_guidance_scale=default_guidance_scale, negative_token=negative_token)
        self._negative_guidance_scale = 0.0

    @torch.no_grad()
    def __call__(self, prompt=None, negative_prompt=None, guidance_scale: float | None = None,
                 negative_guidance_scale: float = 0.0, num_images_per_prompt: int = 1, **kwargs):
        if kwargs.get("prompt_embeds") is not None or kwargs.get("negative_prompt_embeds") is not None:
            raise ValueError("MultiCFGPipeline encodes prompt and negative prompt itself: pass them as text")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        device = self._execution_device
        embeds, _ = self.encode_prompt(prompts, device, 1, False)
        token = self.config.negative_token
        negative_embeds, _ = self.encode_prompt([negative_text(n, token) for n in negatives], device, 1, False)
        self._negative_guidance_scale = float(negative_guidance_scale)
        scale = self.config.default_guidance_scale if guidance_scale is None else guidance_scale
        return super().__call__(prompt_embeds=torch.cat([embeds, negative_embeds], dim=1), guidance_scale=scale,
                                num_images_per_prompt=num_images_per_prompt, **kwargs)

    def get_guidance_scale_embedding(self, w: torch.Tensor, embedding_dim: int = 512,
                                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Called by ``StableDiffusionPipeline.__call__`` with ``w = guidance_scale - 1`` per image."""
        negative = torch.full_like(w, self._negative_guidance_scale, dtype=torch.float32)
        return two_scale_embedding(w.float() + 1, negative, embedding_dim, dtype)

    def save_pretrained(self, save_directory, *args, **kwargs):
        import inspect
        import json
        import shutil
        from pathlib import Path

        super().save_pretrained(save_directory, *args, **kwargs)
        folder, source = Path(save_directory), Path(inspect.getsourcefile(type(self)))
        if source.resolve() != (folder / "pipeline.py").resolve():
            shutil.copyfile(source, folder / "pipeline.py")
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = ["pipeline", type(self).__name__]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
