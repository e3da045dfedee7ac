"""Between radiance fields and 3D Gaussians: NeRF -> splats and splats -> NeRF, both by distillation.

NeRF -> Gaussians: rays of the cameras are rendered through the teacher, and splat centres are drawn from the
samples in proportion to their compositing weights (so they land on the visible surface, where the teacher's
density sits), coloured by the teacher. The splats are then fitted to the teacher's renders of the cameras
with :class:`~gendistill.render.gaussians.GaussianRenderer` (torch backend on CPU, gsplat on CUDA).

Gaussians -> NeRF: the splats' renders of the cameras become the images a field is fitted to
(:func:`gendistill.convert.fit.fit_field`).
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
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, GaussianRenderer, init_from_points
from gendistill.render.nerf import RadianceField, camera_rays, render_cameras, render_rays


@dataclass
class SplatConfig:
    """How to turn a radiance field into Gaussians."""

    num_gaussians: int = 4000
    """Splats placed from the teacher's density."""
    candidate_rays: int = 8192
    """Teacher rays whose samples the centres are drawn from."""
    initial_opacity: float = 0.9
    """Upper bound of a splat's starting opacity, which is the teacher's opacity across the splat
    (``1 - exp(-density * 2 * scale)``): faint teacher floaters start faint instead of covering the object."""
    scale_factor: float = 0.7
    """Initial size: this times the RMS distance to the 3 nearest splats."""
    steps: int = 300
    """Adam steps fitting the splats to the teacher's renders."""
    views_per_step: int = 2
    """Teacher renders per step."""
    num_samples: int = 64
    """Samples per teacher ray."""
    lr_scale: float = 10.0
    """Multiplies gsplat's suggested learning rates (short runs want bigger steps)."""

    def __post_init__(self) -> None:
        check_range("num_gaussians", self.num_gaussians, 1, None)
        check_range("candidate_rays", self.candidate_rays, 1, None)
        check_range("initial_opacity", self.initial_opacity, 1e-4, 0.999)
        check_range("steps", self.steps, 0, None)
        check_range("views_per_step", self.views_per_step, 1, None)


def teacher_views(teacher: RadianceField, cameras: Cameras, background: Tensor, num_samples: int = 64) -> MultiViewData:
    """The teacher's deterministic renders of ``cameras`` (the images the student is fitted to)."""
    with torch.no_grad():
        rgb, _ = render_cameras(teacher, cameras, num_samples, background=background)
    return MultiViewData(cameras, rgb, background)


def place_splats(teacher: RadianceField, cameras: Cameras, config: SplatConfig,
                 generator: torch.Generator) -> GaussianParams:
    """Splats at points drawn from the teacher's compositing weights along random rays, teacher-coloured."""
    origins, directions = (r.reshape(-1, 3) for r in camera_rays(cameras))
    rays = torch.randint(0, origins.shape[0], (config.candidate_rays,), generator=generator)
    with torch.no_grad():
        out = render_rays(teacher, origins[rays], directions[rays], config.num_samples, generator=generator)
        weights = out.weights.reshape(-1)
        if weights.sum() <= 0:
            raise ValueError("the teacher field is empty along every camera ray: nothing to place splats on")
        count = min(config.num_gaussians, int((weights > 0).sum()))
        picks = torch.multinomial(weights, count, replacement=False, generator=generator)
        points = out.positions.reshape(-1, 3)[picks]
        density, colors = teacher(points)
    splats = init_from_points(points, colors, sh_degree=0, opacity=0.5, scale_factor=config.scale_factor)
    with torch.no_grad():
        log_scales = splats.splats["scales"]
        # a lone floater's nearest neighbours are far: keep it from covering the image
        log_scales.clamp_(max=float(log_scales.median()) + math.log(2.0))
        opacity = (1.0 - torch.exp(-density * 2.0 * log_scales.exp().mean(-1))).clamp(0.01, config.initial_opacity)
        splats.splats["opacities"].copy_(torch.logit(opacity))
    return splats


def fit_splats(splats: GaussianParams, targets: MultiViewData, config: SplatConfig, generator: torch.Generator,
               progress: bool = True, on_step: Callable[[int, GaussianParams], bool | None] | None = None,
               renderer: GaussianRenderer | None = None) -> float:
    """Fit ``splats`` in place to ``targets``' images; returns the seconds spent."""
    renderer = renderer or GaussianRenderer()
    scene_scale = float(targets.cameras.positions.norm(dim=-1).max()) / 4.0
    groups = [g.as_torch() for g in splats.parameter_groups(scene_scale)]
    for group in groups:
        group["lr"] *= config.lr_scale
    optimizer = torch.optim.Adam(groups, eps=1e-15)
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="splats", disable=not progress, mininterval=1.0, dynamic_ncols=True)
    for step in bar:
        views = torch.randint(0, len(targets), (config.views_per_step,), generator=generator)
        out = renderer.render(splats, targets.cameras[views], background=targets.background)
        loss = (out.rgb - targets.images[views]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if on_step is not None and on_step(step + 1, splats):
            break
    return time.perf_counter() - start


def render_splats(splats: GaussianParams, cameras: Cameras, background: Tensor,
                  renderer: GaussianRenderer | None = None, batch: int = 4) -> Tensor:
    """Renders (C, 3, H, W) of ``splats`` without gradients, a few cameras at a time."""
    renderer = renderer or GaussianRenderer()
    with torch.no_grad():
        return torch.cat([renderer.render(splats, cameras[i:i + batch], background=background).rgb
                          for i in range(0, len(cameras), batch)])


def splat_views(splats: GaussianParams, cameras: Cameras, background: Tensor) -> MultiViewData:
    """The splats' renders of ``cameras`` as training data for a field (Gaussians -> NeRF)."""
    return MultiViewData(cameras, render_splats(splats, cameras, background), background)
