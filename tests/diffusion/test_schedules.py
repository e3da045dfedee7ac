"""Schedules equal diffusers' own schedulers; training sigma samplers draw what they claim."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

from gendistill.diffusion.schedules import (
    DiscreteVPSchedule, FlowMatchSchedule, KarrasSchedule, LogNormalSigmaSampler, LogUniformSigmaSampler,
    UniformTimestepSampler, flow_time_to_sigma,
)

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          steps_offset=1)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 4, 7, 50])
def test_timesteps_and_sigmas_equal_euler_scheduler(spacing, steps):
    stock = EulerDiscreteScheduler(**SD, timestep_spacing=spacing)
    stock.set_timesteps(steps)
    ours = DiscreteVPSchedule(stock.alphas_cumprod, spacing, steps_offset=1)
    np.testing.assert_allclose(ours.timesteps(steps), stock.timesteps.numpy(), atol=1e-3)
    np.testing.assert_allclose(ours.sigmas(steps).numpy(), stock.sigmas.numpy(), rtol=1e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_timesteps_equal_ddim_scheduler(spacing):
    stock = DDIMScheduler(**SD, timestep_spacing=spacing)
    stock.set_timesteps(10)
    ours = DiscreteVPSchedule(stock.alphas_cumprod, spacing, steps_offset=1)
    np.testing.assert_array_equal(ours.timesteps(10), stock.timesteps.numpy())


def test_karras_equals_diffusers_karras_sigmas():
    stock = EulerDiscreteScheduler(**SD, use_karras_sigmas=True)
    stock.set_timesteps(12)
    plain = EulerDiscreteScheduler(**SD)
    plain.set_timesteps(12)
    ours = KarrasSchedule(float(plain.sigmas[-2]), float(plain.sigmas[0])).sigmas(12)
    np.testing.assert_allclose(ours.numpy(), stock.sigmas.numpy(), rtol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_schedule_equals_flow_match_scheduler(shift):
    stock = FlowMatchEulerDiscreteScheduler(shift=shift)
    stock.set_timesteps(8)
    ours = FlowMatchSchedule(shift).flow_times(8)
    np.testing.assert_allclose(ours, stock.sigmas[:-1].numpy(), rtol=1e-5)
    sigmas = FlowMatchSchedule(shift).sigmas(8)
    assert math.isfinite(sigmas[0]) and sigmas[-1] == 0
    assert torch.allclose(flow_time_to_sigma(torch.tensor([0.5], dtype=torch.float64)), torch.tensor([1.0], dtype=torch.float64))


def test_schedules_decrease():
    ac = EulerDiscreteScheduler(**SD).alphas_cumprod
    for schedule in (DiscreteVPSchedule(ac, "trailing"), KarrasSchedule(0.03, 14.6), FlowMatchSchedule(3.0)):
        s = schedule.sigmas(9)
        assert len(s) == 10 and (s[1:] < s[:-1]).all()


def test_too_many_steps_is_an_error():
    ac = EulerDiscreteScheduler(**SD).alphas_cumprod
    with pytest.raises(ValueError, match="steps must be in"):
        DiscreteVPSchedule(ac).sigmas(1001)


def test_training_sigma_samplers():
    g = torch.Generator().manual_seed(0)
    table = torch.linspace(0.01, 10.0, 1000, dtype=torch.float64)
    uniform = UniformTimestepSampler(table, t_min=20, t_max=980)
    t = uniform.timesteps(20000, g)
    assert t.min() >= 20 and t.max() <= 980 and abs(t.double().mean().item() - 500) < 10
    assert torch.equal(UniformTimestepSampler(table, 5, 5)(3, g), table[[5, 5, 5]])
    log_uniform = LogUniformSigmaSampler(0.01, 100.0)(20000, g)
    assert log_uniform.min() >= 0.01 and log_uniform.max() <= 100.0
    assert abs(log_uniform.log().mean().item() - 0.0) < 0.1
    log_normal = LogNormalSigmaSampler(-1.2, 1.2)(20000, g).log()
    assert abs(log_normal.mean().item() + 1.2) < 0.05 and abs(log_normal.std().item() - 1.2) < 0.05
