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


def vp_output_from_x0(x0: Tensor, x: Tensor, sigma: Tensor, prediction: Prediction) -> Tensor:
    """The inverse of ``vp_x0_from_output``: what a VP network of this prediction type would have output."""
    if prediction == "epsilon":
        return (x - x0) / sigma
    if prediction == "v_prediction":
        return (x - (1 + sigma**2) * x0) / (sigma * (1 + sigma**2).sqrt())
    if prediction == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def flow_velocity_from_x0(x0: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """The inverse of ``flow_x0_from_velocity``: the velocity ``eps - x0`` at canonical ``x`` and ``sigma``."""
    return (x - (1 + sigma) * x0) / sigma


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


def guidance_embedding(scale: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of ``scale - 1`` for UNets with distilled guidance (LCM's ``time_cond_proj_dim``),
    as diffusers' pipelines compute it."""
    w = (scale.float() - 1) * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(np.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 == 1 else emb


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
        xw = x.to(working_dtype(x))  # sigma**2 overflows float16 beyond 256 (zero terminal SNR: 4096)
        sig = expand_sigma(sigma, xw)
        t = self.sigma_to_t(sig.flatten()).to(device=x.device, dtype=torch.float32)
        model_in = (xw / (1 + sig**2).sqrt()).to(network_dtype(self.unet))
        out = self.unet(model_in, t, **_unet_kwargs(cond, x.shape[0], self.timestep_cond)).sample
        return vp_x0_from_output(out.to(xw.dtype), xw, sig, self.prediction).to(x.dtype)


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

    prediction = "flow"  # the network predicts the velocity eps - x0 (guidance rescale works in these units)

    def __init__(self, transformer: nn.Module, num_train_timesteps: int = 1000):
        super().__init__()
        self.transformer = transformer
        self.num_train_timesteps = num_train_timesteps

    def forward(self, x: Tensor, sigma: Tensor, cond: TextCondition | None = None) -> Tensor:
        xw = x.to(working_dtype(x))
        sig = expand_sigma(sigma, xw)
        t = sigma_to_flow_time(sig.flatten()).to(torch.float32) * self.num_train_timesteps
        model_in = (xw / (1 + sig)).to(network_dtype(self.transformer))
        kwargs = {} if cond is None else {"encoder_hidden_states": cond.embeds, "pooled_projections": cond.pooled}
        out = self.transformer(hidden_states=model_in, timestep=t, return_dict=False, **kwargs)[0]
        return flow_x0_from_velocity(out.to(xw.dtype), xw, sig).to(x.dtype)


class LCMBoundaryDenoiser(nn.Module):
    """LCM's boundary condition: ``c_skip(t) * x_vp + c_out(t) * D(x)`` with ``x_vp = x / sqrt(1 + sigma^2)``,
    ``c_skip = s^2 / ((k t)^2 + s^2)``, ``c_out = k t / sqrt((k t)^2 + s^2)``, ``s = 0.5``, ``k`` the timestep
    scaling. It makes the consistency function exact at t = 0; as diffusers' LCMScheduler applies it at
    inference, students trained with it are sampled identically here. The coefficients and their combination
    are computed in at least float32 (``k t`` reaches 1e9 at DMD2's scaling 1e6: float16 overflows at 65504)
    and the result is cast back to the input's dtype."""

    SIGMA_DATA = 0.5

    def __init__(self, inner: VPDenoiser, timestep_scaling: float = 10.0):
        super().__init__()
        self.inner, self.timestep_scaling = inner, timestep_scaling

    def forward(self, x: Tensor, sigma: Tensor, cond=None) -> Tensor:
        xw = x.to(working_dtype(x))
        sig = expand_sigma(sigma, xw)
        t = self.inner.sigma_to_t(sig.flatten()).to(device=x.device, dtype=xw.dtype).round()
        c_skip, c_out = lcm_boundary_coefficients(t.reshape(sig.shape), self.timestep_scaling, self.SIGMA_DATA)
        x0 = self.inner(x, sigma, cond).to(xw.dtype)
        return (c_skip * xw / (1 + sig**2).sqrt() + c_out * x0).to(x.dtype)


def working_dtype(x: Tensor) -> torch.dtype:
    """The dtype the adapters do their coefficient arithmetic in: float32 for half inputs, else the input's."""
    return torch.promote_types(x.dtype, torch.float32)


def lcm_boundary_coefficients(t: Tensor, timestep_scaling: float, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """LCM's ``(c_skip, c_out)`` at timesteps ``t``, computed in at least float32 whatever ``t``'s dtype (the
    returned tensors are in that working dtype: cast them where needed)."""
    scaled = t.to(working_dtype(t)) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out
