"""Per-Gaussian relevance from per-pixel maps (GSEditPro's accumulation) against its closed form."""

import math

import pytest
import torch

from gendistill.render.gaussian_sets import Placement, concat_gaussians, gaussian_subset, placed_gaussians
from gendistill.render.gaussians import GaussianParams, GaussianRenderer, revive_clamped_colours, rgb_to_sh0
from gendistill.render.rasterize_torch import rasterize_gaussians
from gendistill.render.rig import orbit
from gendistill.render.splat_weights import splat_weights


def two_gaussians(opacity_logit: float = 2.0, ys=(-0.6, 0.6), xs=(0.0, 0.0)) -> GaussianParams:
    n = len(ys)
    means = torch.tensor([[x, y, 0.0] for x, y in zip(xs, ys)])
    colours = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    return GaussianParams(means, torch.full((n, 3), math.log(0.1)), torch.tensor([[1.0, 0, 0, 0]] * n),
                          torch.full((n,), opacity_logit), rgb_to_sh0(colours), torch.zeros(n, 0, 3))


def test_a_map_over_one_gaussians_pixels_makes_only_it_relevant():
    params, cams = two_gaussians(), orbit(1, 0.0)  # front camera on +x: y=-0.6 is on the left half
    left = torch.zeros(1, 1, 64, 64)
    left[..., :32] = 1.0
    w = splat_weights(GaussianRenderer(), params, cams, left)
    alpha = GaussianRenderer().render(params, cams).alpha.detach()
    assert w.weighted[1] == 0 and w.weighted[0] > 1.0
    assert torch.allclose(w.coverage.sum(), alpha.sum(), rtol=1e-5)  # weights of a pixel sum to its alpha
    assert torch.allclose(w.weighted[0], (alpha * left).sum(), rtol=1e-5)
    assert torch.equal(w.mean(), torch.tensor([1.0, 0.0]))


def test_weights_equal_alpha_times_transmittance_for_overlapping_gaussians():
    """Two Gaussians on the camera's axis, the near one in front: w_near = a_near, w_far = a_far (1 - a_near)
    at every pixel, so with a map m the sums are those of m times each."""
    params = two_gaussians(0.5, ys=(0.0, 0.0), xs=(0.5, -0.5))  # x=0.5 is nearer the camera at +x
    cams = orbit(1, 0.0, width=32, height=32)
    m = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    w = splat_weights(GaussianRenderer(), params, cams, m)
    parts = [gaussian_subset(params, torch.tensor([i == 0, i == 1])) for i in range(2)]
    alone = [rasterize_gaussians(p.means, p.quats, p.scales, p.opacities, torch.ones(1, 1), cams.viewmats, cams.Ks,
                                 32, 32).alphas[..., 0] for p in parts]
    near, far = alone[0].detach(), alone[1].detach()
    expected = torch.stack([(near * m[:, 0]).sum(), (far * (1 - near) * m[:, 0]).sum()])
    assert torch.allclose(w.weighted, expected, rtol=1e-4, atol=1e-6)


def test_no_gradient_reaches_the_scene_and_bad_map_shapes_fail():
    params, cams = two_gaussians(), orbit(2, 0.0, width=16, height=16)
    splat_weights(GaussianRenderer(), params, cams, torch.ones(2, 1, 16, 16))
    assert all(p.grad is None for p in params.parameters())
    with pytest.raises(ValueError, match="maps must be"):
        splat_weights(GaussianRenderer(), params, cams, torch.ones(1, 1, 16, 16))


def test_placement_inverse_and_concat_round_trip():
    params = two_gaussians()
    moved = placed_gaussians(params, Placement(0.5, (0.0, 0.6, 0.1)))
    back = placed_gaussians(moved, Placement(0.5, (0.0, 0.6, 0.1)).inverse())
    assert torch.allclose(back.means, params.means, atol=1e-6) and torch.allclose(back.log_scales, params.log_scales)
    both = concat_gaussians([params, moved])
    assert len(both) == 4 and torch.equal(gaussian_subset(both, torch.tensor([False, False, True, True])).means,
                                          moved.means)


def test_reviving_clamped_colours_keeps_the_render_and_frees_the_gradient():
    params = two_gaussians()
    with torch.no_grad():
        params.sh0[0, 0, 1] = -5.0  # green far below the clamp: renders 0, and no gradient passes
    cams, renderer = orbit(1, 0.0, width=16, height=16), GaussianRenderer()
    before = renderer.render(params, cams).rgb.detach()
    assert revive_clamped_colours(params) == 1
    assert torch.equal(renderer.render(params, cams).rgb.detach(), before)
    renderer.render(params, cams).rgb[:, 1].sum().backward()
    assert params.sh0.grad[0, 0, 1] != 0
