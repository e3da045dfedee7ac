"""Adapters from diffusers networks to the canonical denoiser ``D(x, sigma, cond) -> x0``.

- ``VPDenoiser``: UNets on discrete VP schedules (SD 1.x/2.x/XL) predicting epsilon, v or x0. The network
  sees ``x / sqrt(1 + sigma^2)`` and the (fractional) timestep whose sigma is ``sigma``.
- ``FlowDenoiser``: flow-matching transformers (SD3-style) predicting the velocity ``eps - x0``. The network
  sees ``x / (1 + sigma)`` at flow time ``t = sigma / (1 + sigma)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.schedules import sigma_to_flow_time, vp_sigmas_from_alphas_cumprod

Prediction = Literal["epsilon", "v_prediction", "sample"]
PREDICTIONS = ("epsilon", "v_prediction", "sample")


def vp_x0_from_output(output: Tensor, x: Tensor, sigma: Tensor, prediction: Prediction) -> Tensor:
    """Turn a VP network's output into x0 in canonical units (``sigma`` already broadcast to x)."""
    if prediction == "epsilon":
        return x - sigma * output
    if prediction == "v_prediction":
        return x / (1 + sigma**2) - output * sigma / (1 + sigma**2).sqrt()
    if prediction == "sample":
        return output
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def flow_x0_from_velocity(velocity: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """x0 from a flow-matching velocity ``eps - x0`` at canonical ``x`` and ``sigma`` (broadcast)."""
    t = sigma / (1 + sigma)
    return x / (1 + sigma) - t * velocity


def network_dtype(network: nn.Module) -> torch.dtype:
    """The dtype a network computes in (diffusers models expose ``.dtype``; plain modules do not)."""
    dtype = getattr(network, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.dtype
    return torch.float32


class SigmaToTimestep:
    """Maps sigma to the (fractional) training timestep, inverting the linear interpolation of the
    per-timestep sigma table that diffusers' Euler scheduler uses. Exact on the table's own sigmas."""

    def __init__(self, alphas_cumprod: Tensor):
        self.table = vp_sigmas_from_alphas_cumprod(alphas_cumprod).numpy()

    def __call__(self, sigma: Tensor) -> Tensor:
        s = sigma.detach().double().cpu().numpy()
        t = np.interp(s, self.table, np.arange(len(self.table), dtype=np.float64))
        return torch.from_numpy(t)


class VPDenoiser(nn.Module):
    """A diffusers ``UNet2DConditionModel`` on a discrete VP schedule, as a canonical denoiser."""

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, prediction: Prediction = "epsilon",
                 timestep_cond: Tensor | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        self.unet = unet
        self.prediction = prediction
        self.sigma_to_t = SigmaToTimestep(alphas_cumprod)
        self.timestep_cond = timestep_cond  # e.g. an LCM guidance-scale embedding

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_to_t.table[-1])

    def forward(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        sig = expand_sigma(sigma, x)
        t = self.sigma_to_t(sig.flatten()).to(device=x.device, dtype=torch.float32)
        model_in = (x / (1 + sig**2).sqrt()).to(network_dtype(self.unet))
        out = self.unet(model_in, t, **_unet_kwargs(cond, x.shape[0], self.timestep_cond)).sample
        return vp_x0_from_output(out.to(x.dtype), x, sig, self.prediction)


def _unet_kwargs(cond: TextCondition | None, batch: int, timestep_cond: Tensor | None) -> dict:
    kwargs: dict = {"return_dict": True}
    if cond is not None:
        kwargs["encoder_hidden_states"] = cond.embeds
        if cond.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    if timestep_cond is not None:
        kwargs["timestep_cond"] = timestep_cond.expand(batch, -1)
    return kwargs


class FlowDenoiser(nn.Module):
    """A diffusers flow-matching transformer (``SD3Transformer2DModel`` signature) as a canonical denoiser."""

    def __init__(self, transformer: nn.Module, num_train_timesteps: int = 1000):
        super().__init__()
        self.transformer = transformer
        self.num_train_timesteps = num_train_timesteps

    def forward(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        sig = expand_sigma(sigma, x)
        t = sigma_to_flow_time(sig.flatten()).to(torch.float32) * self.num_train_timesteps
        model_in = (x / (1 + sig)).to(network_dtype(self.transformer))
        kwargs = {} if cond is None else {"encoder_hidden_states": cond.embeds, "pooled_projections": cond.pooled}
        out = self.transformer(hidden_states=model_in, timestep=t, return_dict=False, **kwargs)[0]
        return flow_x0_from_velocity(out.to(x.dtype), x, sig)
