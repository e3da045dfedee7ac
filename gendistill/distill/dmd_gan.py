"""DMD2's GAN term: a small classifier on the fake-score UNet's bottleneck features.

DMD2 (Yin et al. 2024, §4.3) puts a classifier head on the fake-score network's mid-block output (a UNet
without a mid block, e.g. a KOALA student turned teacher: its last down block's output) and
trains it, together with that network, to tell noised real latents from noised generator samples; the
generator then gets the non-saturating GAN loss through the same features. The features are read with a
forward hook that lives only for one call, so the fake-score network stays a plain UNet that ``VPDenoiser``
drives (no classify flag on ``forward``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn


class GANHead(nn.Module):
    """Bottleneck features (B, C, h, w) -> one realism logit per sample, (B,).

    A strided conv halves the map, then a global average and a 1x1 conv: small, and independent of the
    latent size, so the same head fits the tiny test UNet and SD's 8x8x1280 bottleneck.
    """

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        groups = math.gcd(32, channels)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float()).flatten()


def bottleneck_channels(unet: nn.Module) -> int:
    """Channels of a UNet2DConditionModel's mid block (its last ``block_out_channels``)."""
    return int(unet.config.block_out_channels[-1])


def bottleneck_module(unet: nn.Module) -> nn.Module:
    """The module whose output is the UNet's bottleneck: its mid block, or its last down block when it has
    none (a compressed KOALA / BK-SDM UNet); both have the last ``block_out_channels``."""
    return unet.mid_block if unet.mid_block is not None else unet.down_blocks[-1]


def bottleneck_features(unet: nn.Module, run) -> Tensor:
    """Run ``run()`` (a call that drives ``unet``) and return the output of its bottleneck module.

    The hook is removed before returning, so ordinary calls of the UNet keep no features (and no graph).
    """
    captured: list[Tensor] = []

    def keep(module, args, output):  # a down block returns (hidden states, skip connections)
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = bottleneck_module(unet).register_forward_hook(keep)
    try:
        run()
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"expected one bottleneck call, saw {len(captured)}")
    return captured[0]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss of the classifier: ``softplus(-D(real)) + softplus(D(fake))``."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``softplus(-D(fake))`` (= ``-log sigmoid(D(fake))``)."""
    return F.softplus(-fake_logits).mean()


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Make every parameter of ``modules`` a constant while the block runs, then restore each flag.

    Autograd records ``requires_grad`` when an op runs, so a graph built inside the block carries
    gradients to the inputs only: the generator's GAN loss moves the generator, never the classifier.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
