"""Adaptive density control for text-to-3D: one adapter over gsplat's strategies, plus a prune-only phase.

gsplat's ``DefaultStrategy`` and ``MCMCStrategy`` grow and prune a ``ParameterDict`` in place (and the
Adam state with it) but differ in their calls: ``DefaultStrategy`` needs ``step_pre_backward`` (to retain
the screen-space gradient) and ``step_post_backward(..., packed=False)`` with an initial state built from
the scene scale; ``MCMCStrategy`` needs no pre-backward call and ``step_post_backward(..., lr=)`` with the
means' learning rate. :class:`Densifier` hides that behind ``before_backward`` / ``after_backward``.

From ``prune.after`` on, growth stops and only pruning runs (HumanGaussian's final phase): Gaussians that
are oversized (largest axis above ``max_scale`` times the scene radius), nearly transparent (opacity below
``min_opacity``) or floating away from the rest (distance to the k-th nearest neighbour above
``floater_factor`` times the median of that distance) are removed with ``gsplat.strategy.ops.remove``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from gendistill.errors import UserError, check_range
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, RenderOutput

NEVER = 1 << 60
"""A step that never comes (gsplat's "disabled")."""


@dataclass
class DefaultStrategyConfig:
    """gsplat's DefaultStrategy (3DGS adaptive density control: clone, split, prune)."""

    KIND: ClassVar[str] = "default"

    refine_start: int = 100
    """First step that may grow or prune."""
    refine_stop: int = 10_000
    """No growth from this step on (the prune-only phase also ends it)."""
    refine_every: int = 50
    """Steps between refinements."""
    grow_grad2d: float = 2e-2
    """Mean screen-space gradient above which a Gaussian is cloned or split."""
    grow_scale3d: float = 0.01
    """Gaussians smaller than this (times the scene radius) are cloned, larger ones split."""
    prune_opacity: float = 0.005
    """Gaussians less opaque than this are pruned."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this (times the scene radius) are pruned."""
    reset_every: int = 0
    """Steps between opacity resets (0: never)."""
    max_gaussians: int = 10_000
    """No refinement that could take the scene past this many Gaussians (a refinement at most doubles them)."""


@dataclass
class MCMCStrategyConfig:
    """gsplat's MCMCStrategy (3DGS as Markov chain Monte Carlo); needs gsplat's CUDA kernels."""

    KIND: ClassVar[str] = "mcmc"

    cap_max: int = 20_000
    """Largest number of Gaussians."""
    noise_lr: float = 5e5
    """Scale of the position noise (times the means' learning rate)."""
    refine_start: int = 100
    """First step that relocates and adds Gaussians."""
    refine_stop: int = 10_000
    """No relocation from this step on (the prune-only phase also ends it)."""
    refine_every: int = 50
    """Steps between relocations."""
    min_opacity: float = 0.005
    """Gaussians less opaque than this are relocated."""


@dataclass
class PruneConfig:
    """The prune-only final phase (HumanGaussian): no more growth, remove oversized Gaussians and floaters."""

    after: int | None = 450
    """Step from which growth stops and only pruning runs; None: no prune-only phase."""
    every: int = 50
    """Steps between prunings in that phase (the last step always prunes)."""
    max_scale: float = 0.15
    """Prune Gaussians whose largest axis exceeds this fraction of the scene radius."""
    min_opacity: float = 0.05
    """Prune Gaussians less opaque than this."""
    floater_factor: float = 6.0
    """Prune Gaussians whose distance to their k-th nearest neighbour exceeds this times the median one."""
    floater_neighbours: int = 4
    """k of that test."""


@dataclass
class DensifyConfig:
    """Adaptive density control: a gsplat strategy, then the prune-only phase."""

    strategy: DefaultStrategyConfig | MCMCStrategyConfig | None = field(default_factory=DefaultStrategyConfig)
    """``kind:`` default or mcmc (CUDA only); null: never grow."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    """The prune-only phase."""


@dataclass(frozen=True)
class PruneMasks:
    """Which Gaussians the prune-only phase removes, by reason (a Gaussian may have several)."""

    oversized: Tensor
    """Largest axis above ``max_scale`` times the scene radius, (N,) bool."""
    transparent: Tensor
    """Opacity below ``min_opacity``, (N,) bool."""
    floaters: Tensor
    """Far from the other Gaussians, (N,) bool."""

    @property
    def any(self) -> Tensor:
        return self.oversized | self.transparent | self.floaters


@dataclass(frozen=True)
class DensifyEvent:
    """What one ``after_backward`` call changed."""

    step: int
    """The step."""
    before: int
    """Gaussians before the call."""
    after: int
    """Gaussians after it."""
    pruned_oversized: int = 0
    """Removed by the prune-only phase as oversized."""
    pruned_transparent: int = 0
    """Removed by the prune-only phase as nearly transparent."""
    pruned_floaters: int = 0
    """Removed by the prune-only phase as floaters."""


def kth_neighbour_distance(points: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each point to its k-th nearest other point, (N,); inf when there are not k others."""
    n = points.shape[0]
    if n <= k:
        return points.new_full((n,), float("inf"))
    rows = [torch.cdist(points[s:s + chunk], points).topk(k + 1, dim=1, largest=False).values[:, k]
            for s in range(0, n, chunk)]
    return torch.cat(rows)


@torch.no_grad()
def prune_masks(params: GaussianParams, scene_radius: float, config: PruneConfig) -> PruneMasks:
    """The prune-only phase's verdict on every Gaussian (never all of them: the most opaque one stays)."""
    oversized = params.scales.max(dim=1).values > config.max_scale * scene_radius
    transparent = params.opacities < config.min_opacity
    far = kth_neighbour_distance(params.means.detach(), config.floater_neighbours)
    finite = far[far.isfinite()]
    floaters = (far > config.floater_factor * finite.median()) if finite.numel() else torch.zeros_like(oversized)
    masks = PruneMasks(oversized, transparent, floaters & far.isfinite())
    if masks.any.all():
        keep = params.opacities.argmax()
        for mask in (masks.oversized, masks.transparent, masks.floaters):
            mask[keep] = False
    return masks


def cuda_kernels_available() -> bool:
    """Whether gsplat's compiled CUDA kernels can run (MCMCStrategy's relocation needs them)."""
    return torch.cuda.is_available()


class Densifier:
    """Grows and prunes ``params`` in place during optimisation, keeping ``optimizers`` (one per parameter
    group, keyed by group name, as gsplat's strategies want) in step.

    Call ``before_backward`` after rendering and before ``loss.backward()``, and ``after_backward`` after
    it and after the optimisers' step, handing it the optimizers (the trainer owns them)."""

    def __init__(self, config: DensifyConfig, params: GaussianParams, scene_radius: float = 1.0,
                 total_steps: int | None = None):
        check_range("densify.prune.every", config.prune.every, 1)
        check_range("densify.prune.floater_neighbours", config.prune.floater_neighbours, 1)
        self.config, self.params = config, params
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scene_radius, self.total_steps = scene_radius, total_steps
        self.strategy, self.state = self._make_strategy(config.strategy)

    def use_optimizers(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """The optimizers (one per parameter group, keyed by group name) that grow and shrink with the params."""
        if optimizers is not self.optimizers and self.strategy is not None:
            self.strategy.check_sanity(self.params.splats, optimizers)
        self.optimizers = optimizers

    def state_tensors(self) -> dict[str, Tensor]:
        """The strategy's per-Gaussian running statistics (for checkpoints)."""
        return {k: v for k, v in self.state.items() if isinstance(v, Tensor)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.state.update(tensors)

    def _make_strategy(self, cfg: DefaultStrategyConfig | MCMCStrategyConfig | None):
        if cfg is None:
            return None, {}
        stop = cfg.refine_stop if self.config.prune.after is None else min(cfg.refine_stop, self.config.prune.after)
        check_range("densify.strategy.refine_every", cfg.refine_every, 1)
        if isinstance(cfg, MCMCStrategyConfig):
            if not cuda_kernels_available():
                raise UserError("densify.strategy.kind 'mcmc' needs gsplat's CUDA kernels and no GPU is available; "
                                "use kind 'default' (or null) on a CPU")
            from gsplat.strategy import MCMCStrategy

            strategy = MCMCStrategy(cap_max=cfg.cap_max, noise_lr=cfg.noise_lr, refine_start_iter=cfg.refine_start,
                                    refine_stop_iter=stop, refine_every=cfg.refine_every,
                                    min_opacity=cfg.min_opacity)
            return strategy, strategy.initialize_state()
        from gsplat.strategy import DefaultStrategy

        strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start, refine_stop_iter=stop,
            refine_every=cfg.refine_every, reset_every=cfg.reset_every if cfg.reset_every > 0 else NEVER,
            verbose=False)
        return strategy, strategy.initialize_state(scene_scale=self.scene_radius)

    def pruning_only(self, step: int) -> bool:
        """Whether ``step`` is in the prune-only phase."""
        return self.config.prune.after is not None and step >= self.config.prune.after

    def _info(self, render: RenderOutput, cameras: Cameras) -> dict:
        return {"means2d": render.means2d, "radii": strategy_radii(render.radii), "width": cameras.width,
                "height": cameras.height, "n_cameras": len(cameras), "gaussian_ids": None}

    def _capped(self) -> bool:
        cfg = self.config.strategy
        return isinstance(cfg, DefaultStrategyConfig) and 2 * len(self.params) > cfg.max_gaussians  # it may double

    def before_backward(self, step: int, render: RenderOutput, cameras: Cameras) -> None:
        """Lets the strategy see the render before the backward pass (retains the 2D means' gradient)."""
        if self.strategy is not None and hasattr(self.strategy, "step_pre_backward") and not self.pruning_only(step):
            self.strategy.step_pre_backward(self.params.splats, self.optimizers, self.state, step,
                                            self._info(render, cameras))

    def after_backward(self, step: int, render: RenderOutput, cameras: Cameras,
                       optimizers: dict[str, torch.optim.Optimizer]) -> DensifyEvent:
        """Grows and prunes (strategy phase) or prunes (prune-only phase); returns what changed."""
        self.use_optimizers(optimizers)
        before = len(self.params)
        if self.strategy is not None and not self.pruning_only(step):
            self._strategy_step(step, render, cameras)
        if self.pruning_only(step) and self._prunes_at(step):
            return self.prune(step, before)
        return DensifyEvent(step, before, len(self.params))

    def _strategy_step(self, step: int, render: RenderOutput, cameras: Cameras) -> None:
        info = self._info(render, cameras)
        if isinstance(self.config.strategy, MCMCStrategyConfig):
            lr = self.optimizers["means"].param_groups[0]["lr"]
            self.strategy.step_post_backward(self.params.splats, self.optimizers, self.state, step, info, lr=lr)
        elif not (self._capped() and step % self.strategy.refine_every == 0):
            self.strategy.step_post_backward(self.params.splats, self.optimizers, self.state, step, info,
                                             packed=False)

    def _prunes_at(self, step: int) -> bool:
        last = self.total_steps is not None and step == self.total_steps - 1
        return last or (step - self.config.prune.after) % self.config.prune.every == 0

    @torch.no_grad()
    def prune(self, step: int, before: int | None = None) -> DensifyEvent:
        """Remove the oversized, transparent and floating Gaussians now."""
        from gsplat.strategy.ops import remove

        before = len(self.params) if before is None else before
        masks = prune_masks(self.params, self.scene_radius, self.config.prune)
        if masks.any.any():
            n = len(self.params)  # only per-Gaussian state is cut (MCMC's binomial table is not)
            per_gaussian = {k: v for k, v in self.state.items() if isinstance(v, Tensor) and v.shape[:1] == (n,)}
            remove(self.params.splats, self.optimizers, per_gaussian, masks.any)
            self.state.update(per_gaussian)
        return DensifyEvent(step, before, len(self.params), int(masks.oversized.sum()),
                            int(masks.transparent.sum()), int(masks.floaters.sum()))


def strategy_radii(radii: Tensor) -> Tensor:
    """Screen radii as the installed gsplat's strategies read them: (C, N, 2) from gsplat 1.5 on, one radius
    (C, N) in gsplat 1.4 (which nerfstudio pins, so the nerf extra's environment has it)."""
    import gsplat

    major, minor = (int(part) for part in gsplat.__version__.split(".")[:2])
    return radii.amax(dim=-1) if (major, minor) < (1, 5) and radii.dim() == 3 else radii
