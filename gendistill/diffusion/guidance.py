"""Guidance wrappers: ``Denoiser -> Denoiser``.

Classifier-free guidance mixes the conditional and unconditional (or negative-prompt) predictions. On x0
this is the same as on epsilon or v, because all three are affine in the network output with the same
coefficients. Guidance rescale (Lin et al. 2023) is applied on epsilon, as diffusers does, so images match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.diffusion.denoiser import Denoiser, TextCondition, expand_sigma


def cfg_uses_uncond(scale: float) -> bool:
    """diffusers' rule: guidance is on only for a scale above 1 (so 0 and 1 both mean 'conditional only')."""
    return scale > 1.0


@dataclass
class CFGDenoiser:
    """``D_cfg = D(uncond) + scale * (D(cond) - D(uncond))``, one batched call for both branches.

    ``uncond`` is the negative prompt's condition (the empty prompt's when there is none), already batched
    like the conditions this wrapper will be called with. ``rescale`` in [0, 1] is guidance rescale.
    """

    inner: Denoiser
    uncond: TextCondition
    scale: float
    rescale: float = 0.0

    def __call__(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        if not cfg_uses_uncond(self.scale):
            return self.inner(x, sigma, cond)
        sig = torch.as_tensor(sigma, device=x.device)
        sig2 = torch.cat([sig, sig]) if sig.ndim else sig
        both = self.inner(torch.cat([x, x]), sig2, self.uncond.cat(cond))
        x0_uncond, x0_cond = both.chunk(2)
        x0 = x0_uncond + self.scale * (x0_cond - x0_uncond)
        if self.rescale > 0:
            x0 = rescale_guidance(x0, x0_cond, x, expand_sigma(sigma, x), self.rescale)
        return x0


def rescale_guidance(x0_cfg: Tensor, x0_cond: Tensor, x: Tensor, sigma: Tensor, rescale: float) -> Tensor:
    """Match the std of the guided epsilon to the conditional one's, blended by ``rescale``."""
    eps_cfg = (x - x0_cfg) / sigma
    eps_cond = (x - x0_cond) / sigma
    dims = list(range(1, x.ndim))
    factor = eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True)
    eps = rescale * (eps_cfg * factor) + (1 - rescale) * eps_cfg
    return x - sigma * eps
