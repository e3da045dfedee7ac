"""Sizes and builders of the tiny CLIP the image-to-3D tests use."""

import torch

TINY_CLIP = dict(embed_dim=8, image_width=32, image_layers=1, image_head_width=16, patch_size=16, text_width=32,
                 text_layers=1, text_heads=2)


def build_tiny_clip():
    from gendistill.domains.shapes.clip_training import ClipModelConfig, build_shapes_clip

    return build_shapes_clip(ClipModelConfig(**TINY_CLIP), torch.Generator().manual_seed(0))
