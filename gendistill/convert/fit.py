"""Fit a radiance field to multi-view images: a recipe for the one trainer (``gendistill fit-nerf``).

Each step draws ``rays_per_step`` random pixels of the training views, renders them with jittered samples
over the data's background, and the loss is their squared error. Learning rates are the field's suggested
ones per parameter group (encoder grids, heads) times ``lr_scale``, decaying exponentially to
``lr_final_ratio`` of that by the last step; the optimizer is Adam with eps 1e-15 (:func:`field_optimizer`).
Every random draw comes from the trainer's per-step generator, so an interrupted fit resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.convert.data import MultiViewData
from gendistill.convert.measure import psnr_from_mse
from gendistill.errors import check_range
from gendistill.recipe import Loss, ParamGroup, Phase, Update
from gendistill.render.nerf import RadianceField, camera_rays, render_rays
from gendistill.train.config import OptimizerConfig

FIELD_PHASE = "field"
"""The phase name of a field fit (the key of its optimizer settings)."""


@dataclass
class FitConfig:
    """How to fit a field to images."""

    steps: int = 1500
    """Optimizer steps."""
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


def field_optimizer() -> OptimizerConfig:
    """Adam with eps 1e-15 (nerfstudio's and gsplat's choice for grids and splats); rates come from the groups."""
    return OptimizerConfig(kind="adam", eps=1e-15)


def field_groups(field: RadianceField, lr_scale: float, lr_final: float) -> tuple[ParamGroup, ...]:
    """The field's parameter groups at ``lr_scale`` times their suggested rates, decaying to ``lr_final``."""
    return tuple(ParamGroup(g["name"], list(g["params"]), g["lr"] * lr_scale, lr_final)
                 for g in field.parameter_groups())


@dataclass(frozen=True)
class RayBatch:
    """Random training rays of one step."""

    origins: Tensor
    """(R, 3) ray origins."""
    directions: Tensor
    """(R, 3) ray directions."""
    target: Tensor
    """(R, 3) the pixels' colours."""


class NerfFitRecipe:
    """Photometric fit of ``field`` to ``data``'s pixels (one phase, ``field``; see the module docstring)."""

    def __init__(self, field: RadianceField, data: MultiViewData, config: FitConfig) -> None:
        self.field, self.data, self.config = field, data, config
        self.origins, self.directions = (r.reshape(-1, 3) for r in camera_rays(data.cameras))
        self.target = data.images.permute(0, 2, 3, 1).reshape(-1, 3)

    def phases(self) -> list[Phase]:
        groups = field_groups(self.field, self.config.lr_scale, self.config.lr_final_ratio)
        return [Phase(FIELD_PHASE, groups=groups)]

    def modules(self) -> dict[str, nn.Module]:
        return {"field": self.field}

    def ema_module(self) -> str | None:
        return None

    def batch(self, step: int, generator: torch.Generator) -> RayBatch:
        """``rays_per_step`` random training pixels (the trainer's ``batch_fn``)."""
        rays = torch.randint(0, self.origins.shape[0], (self.config.rays_per_step,), generator=generator)
        return RayBatch(self.origins[rays], self.directions[rays], self.target[rays])

    def loss(self, batch: RayBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        """Squared error of the rendered rays (samples jittered from ``generator``); terms: psnr."""
        out = render_rays(self.field, batch.origins, batch.directions, self.config.num_samples, generator=generator,
                          background=self.data.background)
        mse = (out.rgb - batch.target).square().mean()
        return Loss(mse, {"psnr": psnr_from_mse(mse.detach().item())})

    def after_update(self, update: Update) -> None:
        """Nothing to do after a step."""
