"""The densification adapter over gsplat's strategies and the prune-only phase."""

import math

import pytest
import torch

from gendistill.errors import UserError
from gendistill.render.gaussians import GaussianRenderer, init_from_points, init_from_sphere
from gendistill.render.rig import orbit
from gendistill.render import densify as densify_module
from gendistill.render.densify import DefaultStrategyConfig, DensifyConfig, MCMCStrategyConfig, PruneConfig
from gendistill.render.densify import Densifier, prune_masks


def adam(params):
    return {g.name: torch.optim.Adam([g.as_torch()]) for g in params.parameter_groups()}


def run_steps(densifier, params, optimizers, steps, cams=None):
    cams = cams or orbit(2, 20.0, width=24, height=24)
    events = []
    for step in steps:
        out = GaussianRenderer().render(params, cams, background=torch.ones(3))
        densifier.before_backward(step, out, cams)
        for opt in optimizers.values():
            opt.zero_grad()
        (1 - out.rgb).square().mean().backward()
        for opt in optimizers.values():
            opt.step()
        events.append(densifier.after_backward(step, out, cams, optimizers))
    return events


def test_default_strategy_grows_and_keeps_optimizers_in_step():
    params = init_from_sphere(150, 0.8, torch.Generator().manual_seed(0), sh_degree=0)
    optimizers = adam(params)
    config = DensifyConfig(DefaultStrategyConfig(refine_start=0, refine_every=2, grow_grad2d=1e-9),
                           PruneConfig(after=None))
    events = run_steps(Densifier(config, params), params, optimizers, range(3))
    assert events[-1].after == len(params) > 150 and events[-1].before == 150
    for name, opt in optimizers.items():
        assert opt.param_groups[0]["params"][0] is params.splats[name]
        assert opt.state[params.splats[name]]["exp_avg"].shape == params.splats[name].shape


def test_default_strategy_prunes_transparent_gaussians_and_respects_the_cap():
    params = init_from_sphere(100, 0.8, torch.Generator().manual_seed(0), sh_degree=0, opacity=0.9)
    with torch.no_grad():
        params.opacity_logits[:40] = math.log(0.001 / 0.999)
    optimizers = adam(params)
    config = DensifyConfig(DefaultStrategyConfig(refine_start=0, refine_every=2, grow_grad2d=1e9, prune_opacity=0.01),
                           PruneConfig(after=None))
    run_steps(Densifier(config, params), params, optimizers, range(3))
    assert len(params) == 60 and params.opacities.min() > 0.5
    capped = DensifyConfig(DefaultStrategyConfig(refine_start=0, refine_every=2, grow_grad2d=1e-9, max_gaussians=119),
                           PruneConfig(after=None))
    run_steps(Densifier(capped, params), params, optimizers, range(3))
    assert len(params) == 60


def planted_scene():
    """300 small opaque Gaussians in a ball of radius 0.5, one oversized Gaussian and one floater."""
    g = torch.Generator().manual_seed(1)
    directions = torch.nn.functional.normalize(torch.randn(300, 3, generator=g), dim=1)
    points = directions * 0.5 * torch.rand(300, 1, generator=g) ** (1 / 3)
    points = torch.cat([points, torch.tensor([[0.0, 0.0, 0.1], [3.0, 0.0, 0.0]])])
    params = init_from_points(points, torch.rand(302, 3, generator=g), sh_degree=0, opacity=0.8)
    with torch.no_grad():
        params.log_scales.fill_(math.log(0.03))
        params.log_scales[300] = math.log(0.6)  # oversized; 301 is a normal-sized floater
    return params


def test_prune_only_phase_removes_a_planted_oversized_gaussian_and_a_floater():
    params = planted_scene()
    masks = prune_masks(params, 1.0, PruneConfig(after=0))
    assert masks.oversized.nonzero().flatten().tolist() == [300]
    assert masks.floaters.nonzero().flatten().tolist() == [301]
    assert not masks.transparent.any()
    optimizers = adam(params)
    densifier = Densifier(DensifyConfig(DefaultStrategyConfig(grow_grad2d=1e-9, refine_every=1, refine_start=0),
                                        PruneConfig(after=2, every=5)), params, total_steps=4)
    events = run_steps(densifier, params, optimizers, range(4))
    assert events[1].after > 302  # the strategy grows before the prune-only phase
    assert events[2].pruned_oversized >= 1 and events[2].pruned_floaters >= 1
    assert events[3].after == events[2].after  # step 3 is the last one: it prunes again, nothing left to prune
    assert params.scales.max() <= 0.15 and params.means.norm(dim=1).max() < 1.0
    assert len(params) == events[2].after and densifier.pruning_only(2) and not densifier.pruning_only(1)


def test_prune_never_removes_every_gaussian():
    params = init_from_sphere(5, 0.5, torch.Generator().manual_seed(0), sh_degree=0, opacity=0.001)
    densifier = Densifier(DensifyConfig(None, PruneConfig(after=0)), params)
    densifier.use_optimizers(adam(params))
    assert densifier.prune(0).after == 1


def test_mcmc_needs_cuda_and_gets_the_means_learning_rate(monkeypatch):
    params = init_from_sphere(20, 0.5, torch.Generator().manual_seed(0), sh_degree=0)
    optimizers = adam(params)
    config = DensifyConfig(MCMCStrategyConfig(), PruneConfig(after=None))
    with pytest.raises(UserError, match="mcmc.*CUDA"):
        Densifier(config, params)
    from gsplat.strategy import MCMCStrategy

    calls = []
    monkeypatch.setattr(densify_module, "cuda_kernels_available", lambda: True)
    monkeypatch.setattr(MCMCStrategy, "step_post_backward", lambda self, *a, **kw: calls.append((a[3], kw)))
    run_steps(Densifier(config, params), params, optimizers, range(2))
    assert calls == [(0, {"lr": optimizers["means"].param_groups[0]["lr"]}), (1, {"lr": 1.6e-4})]
