"""TwinFlow's terms against closed forms: on a one-point data distribution every path is straight, so the exact
flow map is known, ``F(x, t, r) = (x - c) / |t|`` for both trajectories when the one-step sample is ``c``."""

from __future__ import annotations

import torch

from gendistill.distill.twinflow_losses import (euler_displacement, interpolate, one_step, rcgm_target,
                                                rectify_gradient, twin_terms)

C = torch.tensor([0.5, -1.0, 2.0, 0.25]).view(1, 4, 1, 1).expand(1, 4, 2, 2)


def point_mass_map(c=C):
    """The exact flow map of data concentrated at ``c`` (either sign of t: the same straight paths)."""
    return lambda x, t, r: (x - c) / t.abs().view(-1, 1, 1, 1)


def test_interpolation_and_conditional_velocity():
    x0, eps, t = torch.zeros(2, 1), torch.ones(2, 1), torch.tensor([0.25, -0.75])
    x_t, v = interpolate(x0, eps, t)
    assert torch.allclose(x_t, torch.tensor([[0.25], [0.75]])) and torch.equal(v, eps - x0)


def test_euler_displacement_of_a_constant_velocity_is_velocity_times_interval():
    v = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    t, r = torch.tensor([0.9, 0.5, 0.3]), torch.tensor([0.1, 0.5, 0.0])
    shift = euler_displacement(lambda x, a, b: v, torch.zeros_like(v), t, r, steps=3)
    assert torch.allclose(shift, v * (t - r).view(-1, 1, 1, 1), atol=1e-6)


def test_the_exact_flow_map_is_a_fixed_point_of_the_rcgm_target_for_long_and_short_intervals():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 4, 2, 2, generator=g)
    t, r = torch.tensor([0.9, 0.6, 0.3, 0.305]), torch.tensor([0.0, 0.2, 0.295, 0.3])  # the last two: < delta
    x_t, v = interpolate(C.expand(4, -1, -1, -1), z, t)
    exact = point_mass_map()
    prediction = exact(x_t, t, r)
    assert torch.allclose(rcgm_target(exact, prediction, v, x_t, t, r, order=2), prediction, atol=1e-4)
    wrong = prediction + 0.3
    target = rcgm_target(exact, wrong, v, x_t, t, r, order=2)
    # a long interval's residual is 0.3 (t - r) / delta, clamped to 1: the target lies below the wrong value;
    # below delta the residual is F - v itself: the target is the exact map
    assert (target[:2] - wrong[:2] <= -0.3 + 1e-4).all()
    assert torch.allclose(target[2:], prediction[2:], atol=1e-4)


def test_every_twin_term_vanishes_at_the_exact_map_and_rectify_is_zero_when_fake_equals_real():
    x0 = C.expand(6, -1, -1, -1).contiguous()
    terms = twin_terms(point_mass_map(), point_mass_map(), x0, torch.Generator().manual_seed(2), order=2)
    assert set(terms) == {"base", "real", "fake", "rectify", "consistency"}
    for name, value in terms.items():
        assert value.abs().max() < 1e-6, name


def test_rectify_moves_the_one_step_sample_towards_the_real_trajectorys_data():
    """The fake branch knows the generator lands at ``c_fake``; the real one at ``c``: a gradient step on the
    one-step map's output with the rectify loss moves ``x_fake`` from ``c_fake`` towards ``c``."""
    c_fake = C + 1.0
    real, fake = point_mass_map(C), point_mass_map(c_fake)

    def twin(x, t, r):
        return torch.where((t < 0).view(-1, 1, 1, 1), fake(x, t, r), real(x, t, r))

    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, 4, 2, 2, generator=g)
    offset = torch.zeros(1, requires_grad=True)
    x_fake, out = one_step(lambda x, t, r: fake(x, t, r) + offset, z)
    assert torch.allclose(x_fake, c_fake.expand_as(x_fake), atol=1e-5)
    push = rectify_gradient(twin, x_fake.detach(), torch.randn(z.shape, generator=g), torch.rand(8, generator=g))
    loss = ((out - (out - push).detach()) ** 2).mean()
    loss.backward()
    # x_fake = z - F: a descent step on F moves x_fake by +lr * grad, here towards c (c - c_fake = -1)
    assert offset.grad.item() < 0
