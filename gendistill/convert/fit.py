"""Fit a radiance field to multi-view images (photometric loss on random rays), and measure it.

The training loop is deliberately plain: each step draws ``rays_per_step`` random pixels of the training
views, renders them with jittered samples over the data's background and takes an Adam step on the squared
error. ``on_step(step, field)`` lets a caller watch (or stop, by returning True) the run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gendistill.convert.data import MultiViewData
from gendistill.errors import check_range
from gendistill.render.nerf import RadianceField, camera_rays, render_cameras, render_rays


@dataclass
class FitConfig:
    """How to fit a field to images."""

    steps: int = 1500
    """Adam steps."""
    rays_per_step: int = 1024
    """Random training pixels per step."""
    num_samples: int = 48
    """Samples per ray (stratified, jittered) while training and evaluating."""
    lr_scale: float = 1.0
    """Multiplies every suggested learning rate of the field."""
    lr_final_ratio: float = 0.1
    """Learning rates decay exponentially to this fraction of their start by the last step."""

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 1, None)
        check_range("rays_per_step", self.rays_per_step, 1, None)
        check_range("num_samples", self.num_samples, 2, None)
        check_range("lr_scale", self.lr_scale, 0.0, None)
        check_range("lr_final_ratio", self.lr_final_ratio, 1e-6, 1.0)


@dataclass(frozen=True)
class FitResult:
    """What a fit did."""

    steps: int
    """Steps run (fewer than configured when on_step stopped the run)."""
    seconds: float
    """Wall-clock of the loop."""
    final_loss: float
    """Mean squared error of the last step's rays."""


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1], in dB."""
    return psnr_from_mse((a.detach().float() - b.detach().float()).square().mean().item())


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error of values in [0, 1]."""
    return -10.0 * math.log10(max(mse, 1e-12))


def render_views(field: RadianceField, data: MultiViewData, num_samples: int = 48) -> Tensor:
    """The field's deterministic renders (C, 3, H, W) of ``data``'s cameras over its background."""
    with torch.no_grad():
        return render_cameras(field, data.cameras, num_samples, background=data.background)[0]


def field_psnr(field: RadianceField, data: MultiViewData, num_samples: int = 48) -> float:
    """PSNR of the field's renders against ``data``'s images."""
    return psnr(render_views(field, data, num_samples), data.images)


def make_optimizer(field: RadianceField, lr_scale: float = 1.0) -> torch.optim.Adam:
    """Adam over the field's parameter groups at ``lr_scale`` times their suggested rates."""
    groups = field.parameter_groups()
    for group in groups:
        group["lr"] *= lr_scale
    return torch.optim.Adam(groups, eps=1e-15)


def exponential_decay(optimizer: torch.optim.Optimizer, steps: int, final_ratio: float):
    """A scheduler that multiplies every rate by ``final_ratio`` over ``steps`` steps."""
    gamma = final_ratio ** (1.0 / max(steps, 1))
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)


def fit_field(field: RadianceField, data: MultiViewData, config: FitConfig, generator: torch.Generator,
              progress: bool = True, on_step: Callable[[int, RadianceField], bool | None] | None = None,
              eval_data: MultiViewData | None = None) -> FitResult:
    """Train ``field`` on ``data``'s pixels; the bar shows loss and training-batch PSNR (and held-out PSNR,
    every 10% of the run, when ``eval_data`` is given)."""
    origins, directions = (r.reshape(-1, 3) for r in camera_rays(data.cameras))
    target = data.images.permute(0, 2, 3, 1).reshape(-1, 3)
    optimizer = make_optimizer(field, config.lr_scale)
    scheduler = exponential_decay(optimizer, config.steps, config.lr_final_ratio)
    bar = tqdm(range(config.steps), desc=f"fit {field.config.architecture}", disable=not progress,
               mininterval=1.0, dynamic_ncols=True)
    start, loss_value, step = time.perf_counter(), float("nan"), 0
    for step in bar:
        rays = torch.randint(0, origins.shape[0], (config.rays_per_step,), generator=generator)
        out = render_rays(field, origins[rays], directions[rays], config.num_samples, generator=generator,
                          background=data.background)
        loss = (out.rgb - target[rays]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_value = loss.item()
        postfix = {"loss": f"{loss_value:.4f}", "psnr": f"{psnr_from_mse(loss_value):.2f}"}
        if eval_data is not None and progress and (step + 1) % max(1, config.steps // 10) == 0:
            postfix["held-out psnr"] = f"{field_psnr(field, eval_data, config.num_samples):.2f}"
        bar.set_postfix(postfix, refresh=False)
        if on_step is not None and on_step(step + 1, field):
            break
    return FitResult(steps=step + 1, seconds=time.perf_counter() - start, final_loss=loss_value)
