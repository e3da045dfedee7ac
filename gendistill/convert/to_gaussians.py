"""Between radiance fields and 3D Gaussians: NeRF -> splats and splats -> NeRF, both by distillation.

NeRF -> Gaussians: rays of the cameras are rendered through the teacher, and splat centres are drawn from the
samples in proportion to their compositing weights (so they land on the visible surface, where the teacher's
density sits), coloured by the teacher (:func:`place_splats`). :class:`SplatFitRecipe` then fits the splats to
the teacher's renders of the cameras (:func:`teacher_targets`: evaluated only in the teacher's occupied cells)
on the one trainer, with :class:`~gendistill.render.gaussians.GaussianRenderer` (torch backend on CPU, gsplat
on CUDA).

Gaussians -> NeRF: the splats' renders of the cameras (:func:`~gendistill.convert.measure.splat_views`) become
the images a field is fitted to (:class:`gendistill.convert.fit.NerfFitRecipe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.convert.data import MultiViewData
from gendistill.errors import check_range
from gendistill.recipe import Loss, ParamGroup, Phase, Update
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, GaussianRenderer, init_from_points
from gendistill.render.nerf import RadianceField, camera_rays, render_rays

SPLATS_PHASE = "splats"
"""The phase name of a splat fit (the key of its optimizer settings)."""


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
    """Optimizer steps fitting the splats to the teacher's renders."""
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


def teacher_targets(teacher: RadianceField, cameras: Cameras, background: Tensor, num_samples: int,
                    generator: torch.Generator, occupancy_resolution: int = 32, chunk: int = 8192) -> MultiViewData:
    """The teacher's deterministic renders of ``cameras`` (the splats' targets), querying it only at samples in
    its occupied cells (:mod:`gendistill.convert.occupancy`): what
    :func:`~gendistill.convert.measure.teacher_views` renders, without paying for the empty space."""
    from gendistill.convert.occupancy import teacher_occupancy
    from gendistill.convert.teacher_bank import render_teacher_rays

    grid = teacher_occupancy(teacher, occupancy_resolution, generator)
    origins, directions = (r.reshape(-1, 3) for r in camera_rays(cameras))
    parts = [render_teacher_rays(teacher, origins[i:i + chunk], directions[i:i + chunk], num_samples, background,
                                 grid)[0] for i in range(0, origins.shape[0], chunk)]
    rgb = torch.cat(parts).view(len(cameras), cameras.height, cameras.width, 3).permute(0, 3, 1, 2)
    return MultiViewData(cameras, rgb, background)


class SplatFitRecipe:
    """Fit ``splats`` to ``targets``' images: each step renders ``views_per_step`` random target cameras and
    the loss is the squared error. One phase, ``splats``, one group per splat parameter at gsplat's suggested
    rate (means scaled by the scene) times ``lr_scale``, constant over the run."""

    def __init__(self, splats: GaussianParams, targets: MultiViewData, config: SplatConfig,
                 renderer: GaussianRenderer | None = None) -> None:
        self.splats, self.targets, self.config = splats, targets, config
        self.renderer = renderer or GaussianRenderer()
        self.scene_scale = float(targets.cameras.positions.norm(dim=-1).max()) / 4.0

    def phases(self) -> list[Phase]:
        groups = tuple(ParamGroup(g.name, [g.param], g.lr * self.config.lr_scale)
                       for g in self.splats.parameter_groups(self.scene_scale))
        return [Phase(SPLATS_PHASE, groups=groups)]

    def modules(self) -> dict[str, nn.Module]:
        return {"splats": self.splats}

    def ema_module(self) -> str | None:
        return None

    def batch(self, step: int, generator: torch.Generator) -> Tensor:
        """Indices of this step's target views (the trainer's ``batch_fn``)."""
        return torch.randint(0, len(self.targets), (self.config.views_per_step,), generator=generator)

    def loss(self, batch: Tensor, phase: str, step: int, generator: torch.Generator) -> Loss:
        """Squared error of the splats' renders of the batch's views against the targets."""
        out = self.renderer.render(self.splats, self.targets.cameras[batch], background=self.targets.background)
        return Loss((out.rgb - self.targets.images[batch]).square().mean(), outputs=out)

    def after_update(self, update: Update) -> None:
        """Nothing to do after a step (no densification: the splats were placed on the teacher's surface)."""
