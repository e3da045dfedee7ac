"""Guidance wrappers: ``Denoiser -> Denoiser``.

Classifier-free guidance mixes the conditional and unconditional (or negative-prompt) predictions. On x0
this is the same as on epsilon or v, because all three are affine in the network output with the same
coefficients. Guidance rescale (Lin et al. 2023) is not: it matches standard deviations, so it depends on the
units. diffusers applies it to the network's own output (``rescale_noise_cfg`` on ``noise_pred``: epsilon for
epsilon models, v for v-prediction ones), and so does ``CFGDenoiser``, in the prediction space of the model it
wraps (tested against StableDiffusionPipeline for both, latents within 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.diffusion.adapters import flow_velocity_from_x0, flow_x0_from_velocity, vp_output_from_x0, \
    vp_x0_from_output
from gendistill.diffusion.denoiser import Denoiser, TextCondition, expand_sigma


def cfg_uses_uncond(scale: float) -> bool:
    """diffusers' rule: guidance is on only for a scale above 1 (so 0 and 1 both mean 'conditional only')."""
    return scale > 1.0


@dataclass
class CFGDenoiser:
    """``D_cfg = D(uncond) + scale * (D(cond) - D(uncond))``, one batched call for both branches.

    ``uncond`` is the negative prompt's condition (the empty prompt's when there is none), already batched
    like the conditions this wrapper will be called with. ``rescale`` in [0, 1] is guidance rescale, applied in
    ``prediction`` space ("epsilon", "v_prediction", "sample" or "flow"); None reads the wrapped denoiser's
    (``prediction_space``).
    """

    inner: Denoiser
    uncond: TextCondition
    scale: float
    rescale: float = 0.0
    prediction: str | None = None

    def __call__(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        if not cfg_uses_uncond(self.scale):
            return self.inner(x, sigma, cond)
        sig = torch.as_tensor(sigma, device=x.device)
        sig2 = torch.cat([sig, sig]) if sig.ndim else sig
        both = self.inner(torch.cat([x, x]), sig2, self.uncond.cat(cond))
        x0_uncond, x0_cond = both.chunk(2)
        x0 = x0_uncond + self.scale * (x0_cond - x0_uncond)
        if self.rescale > 0:
            prediction = self.prediction or prediction_space(self.inner)
            x0 = rescale_guidance(x0, x0_cond, x, expand_sigma(sigma, x), self.rescale, prediction)
        return x0


def prediction_space(denoiser) -> str:
    """The prediction type of the network behind a denoiser: its own ``prediction``, else that of the denoiser
    it wraps (``inner``, e.g. an NFE counter), else "epsilon"."""
    for _ in range(16):
        prediction = getattr(denoiser, "prediction", None)
        if isinstance(prediction, str):
            return prediction
        denoiser = getattr(denoiser, "inner", None)
        if denoiser is None:
            break
    return "epsilon"


def rescale_guidance(x0_cfg: Tensor, x0_cond: Tensor, x: Tensor, sigma: Tensor, rescale: float,
                     prediction: str = "epsilon") -> Tensor:
    """Match the std of the guided network output to the conditional one's, blended by ``rescale``, in the
    network's ``prediction`` space (diffusers' ``rescale_noise_cfg``); computed in at least float32."""
    dtype = x0_cfg.dtype
    work = torch.promote_types(dtype, torch.float32)
    x0_cfg, x0_cond, x, sigma = (t.to(work) for t in (x0_cfg, x0_cond, x, sigma))
    if prediction == "flow":
        to_out, from_out = flow_velocity_from_x0, flow_x0_from_velocity
    else:
        def to_out(x0, x, sigma):
            return vp_output_from_x0(x0, x, sigma, prediction)

        def from_out(out, x, sigma):
            return vp_x0_from_output(out, x, sigma, prediction)
    out_cfg, out_cond = to_out(x0_cfg, x, sigma), to_out(x0_cond, x, sigma)
    dims = list(range(1, x.ndim))
    factor = out_cond.std(dim=dims, keepdim=True) / out_cfg.std(dim=dims, keepdim=True)
    out = rescale * (out_cfg * factor) + (1 - rescale) * out_cfg
    return from_out(out, x, sigma).to(dtype)
