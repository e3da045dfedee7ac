"""MeanFlow distillation (gendistill.distill.meanflow): the target, the JVP, the adaptive weight and the two-time
conditioning against closed forms (a run on the one trainer and its export: test_meanflow_run.py)."""

import math

import pytest
import torch
from torch import nn

from gendistill.config import load_config
from gendistill.distill.meanflow import (
    MeanFlowConfig,
    MeanFlowRecipe,
    adaptive_loss,
    mean_flow_jvp,
    meanflow_target,
    sample_times,
    teacher_velocity,
)
from gendistill.distill.models import DistillBatch
from gendistill.errors import UserError
from gendistill.jobs.distill.config import DistillConfig


def tiny_recipe(model, **overrides):
    config = MeanFlowConfig(embedder_frequency_dim=16, embedder_hidden_dim=16, **overrides)
    return MeanFlowRecipe(model, config)


def batch_of(model, prompts, latents=None):
    cond, uncond = model.encode_batch(prompts)
    return DistillBatch(list(prompts), cond, uncond, latents)


# --- closed forms --------------------------------------------------------------------------------------


def test_target_with_r_equal_t_is_the_velocity_whatever_the_derivative():
    v, dudt = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2) * 100
    t = torch.tensor([0.9, 0.5, 0.1])
    assert torch.equal(meanflow_target(v, dudt, t, t), v)
    r = torch.tensor([0.4, 0.5, 0.0])
    expected = v - (t - r).view(-1, 1, 1, 1) * dudt
    assert torch.allclose(meanflow_target(v, dudt, t, r), expected)


def _oracle_point(x0):
    """Data is the single point x0: every path is straight, u(z, r, t) = v(z, t) = (z - x0) / t."""
    return lambda z, t: (z - x0) / t.view(-1, 1, 1, 1)


def _oracle_gaussian(s: float):
    """Data N(0, s^2 I): the flow is z_t = z_1 sigma_t, sigma_t = sqrt((1 - t)^2 s^2 + t^2), so
    u(z_t, r, t) = (z_t - z_r) / (t - r) = z (1 - sigma_r / sigma_t) / (t - r) and v = z sigma_t' / sigma_t."""
    def sigma(t):
        return ((1 - t) ** 2 * s**2 + t**2).sqrt()

    def velocity(z, t):
        dsigma = (t - (1 - t) * s**2) / sigma(t)
        return z * (dsigma / sigma(t)).view(-1, 1, 1, 1)

    def average(z, t, r):
        return z * ((1 - sigma(r) / sigma(t)) / (t - r)).view(-1, 1, 1, 1)

    return velocity, average


@pytest.mark.parametrize("method", ["autograd", "finite_difference"])
def test_an_oracle_student_has_zero_loss_on_straight_paths_to_one_point(method):
    x0 = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.9, 0.6, 0.3, 0.05], dtype=torch.float64)
    r = torch.tensor([0.1, 0.6, 0.0, 0.01], dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    z = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps
    v = eps - x0  # the conditional velocity is the true one here
    u, dudt = mean_flow_jvp(_oracle_point(x0), z, t, v, method, fd_step=1e-3)
    assert dudt.abs().max() < 1e-7  # straight paths: u is constant along the flow
    loss, _ = adaptive_loss(u - meanflow_target(v, dudt, t, r), 1.0, 1e-3)
    assert loss < 1e-10


@pytest.mark.parametrize("method, tol", [("autograd", 1e-12), ("finite_difference", 1e-6)])
def test_the_exact_average_velocity_of_gaussian_data_meets_its_target(method, tol):
    """A curved flow: the JVP term does not vanish, and the closed-form u is the target's fixed point."""
    velocity, average = _oracle_gaussian(0.5)
    t = torch.tensor([0.9, 0.7, 0.4], dtype=torch.float64)
    r = torch.tensor([0.1, 0.5, 0.2], dtype=torch.float64)
    z = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    v = velocity(z, t)
    u, dudt = mean_flow_jvp(lambda zz, tt: average(zz, tt, r.repeat(len(zz) // 3)), z, t, v, method, fd_step=1e-4)
    assert dudt.abs().max() > 0.05
    target = meanflow_target(v, dudt, t, r)
    assert (u - target).abs().max() < tol * max(1.0, float(u.abs().max()))
    wrong = meanflow_target(v, torch.zeros_like(dudt), t, r)  # without the JVP term it is not
    assert (u - wrong).abs().max() > 0.01


def test_torch_func_jvp_and_the_central_difference_agree_on_a_small_network():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(9, 32), nn.SiLU(), nn.Linear(32, 8)).double()

    def u(z, t):
        flat = torch.cat([z.flatten(1), t[:, None]], dim=1)
        return net(flat).view_as(z)

    z, v = torch.randn(5, 2, 2, 2, dtype=torch.float64), torch.randn(5, 2, 2, 2, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    u1, exact = mean_flow_jvp(u, z, t, v, "autograd")
    u2, approx = mean_flow_jvp(u, z, t, v, "finite_difference", fd_step=1e-4)
    assert torch.allclose(u1, u2) and u1.requires_grad and u2.requires_grad
    assert (exact - approx).norm() / exact.norm() < 1e-6


def test_the_two_jvps_agree_through_the_tiny_sd3_student(tiny_flow_model):
    recipe = tiny_recipe(tiny_flow_model)
    student = recipe.student.double()
    nn.init.normal_(student.interval_embedder.linear_2.weight, std=0.5)  # make h matter
    cond = tiny_flow_model.encode_batch(["a red cube", "a blue sphere"])[0].to(dtype=torch.float64)
    z, v = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 8, 8, dtype=torch.float64)
    t, r = torch.tensor([0.7, 0.4], dtype=torch.float64), torch.tensor([0.2, 0.1], dtype=torch.float64)

    def u(zz, tt):
        n = zz.shape[0] // 2
        from gendistill.diffusion.denoiser import TextCondition
        return student(zz, tt, r.repeat(n), TextCondition.concat([cond] * n))

    _, exact = mean_flow_jvp(u, z, t, v, "autograd")
    _, approx = mean_flow_jvp(u, z, t, v, "finite_difference", fd_step=1e-4)
    # diffusers rounds the timestep to float32 in its sinusoidal embedding: the difference quotient's floor
    assert (exact - approx).norm() / exact.norm() < 5e-3


def test_adaptive_weight_is_one_over_squared_norm_plus_c_to_the_p_and_carries_no_gradient():
    delta = torch.randn(4, 3, 2, 2, requires_grad=True)
    loss, w = adaptive_loss(delta, 0.75, 0.1)
    squared = delta.detach().pow(2).flatten(1).sum(1)
    assert torch.allclose(w, 1 / (squared + 0.1) ** 0.75)
    assert torch.allclose(loss, (w * squared).mean())
    loss.backward()
    expected = (2 * delta.detach() * w.view(-1, 1, 1, 1)) / 4  # d/d delta of mean(sg(w) ||delta||^2)
    assert torch.allclose(delta.grad, expected)
    plain, w0 = adaptive_loss(delta.detach(), 0.0, 1e-3)  # p = 0: plain summed squared error
    assert torch.allclose(w0, torch.ones(4)) and torch.allclose(plain, squared.mean())


def test_time_pairs_are_ordered_and_a_quarter_has_r_below_t():
    config = MeanFlowConfig()
    t, r = sample_times(4000, config, 3.0, torch.Generator().manual_seed(0))
    assert ((r <= t) & (t < 1) & (r > 0)).all()
    assert abs((r < t).float().mean().item() - 0.25) < 0.03
    again = sample_times(4000, config, 3.0, torch.Generator().manual_seed(0))
    assert torch.equal(t, again[0]) and torch.equal(r, again[1])
    logit = torch.logit(t / (3 - 2 * t))  # undo the shift s t / (1 + (s - 1) t) with s = 3
    assert logit.median() > -0.4  # t is the larger of two draws of logit-normal(-0.4, 1)


def _train_toy_mean_flow(with_jvp_term: bool, steps: int = 800) -> nn.Module:
    """A small MLP u(z, t, h) trained by the MeanFlow objective on the exact velocity of data {-1, +1} in 1-D:
    z_t = (1 - t) x0 + t eps gives v(z, t) = (z - tanh(z (1 - t) / t^2)) / t."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    config, g = MeanFlowConfig(), torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = torch.randint(0, 2, (256, 1), generator=g).float() * 2 - 1
        t, r = sample_times(256, config, 1.0, g)
        z = (1 - t)[:, None] * x0 + t[:, None] * torch.randn(256, 1, generator=g)
        v = _two_point_velocity(z, t)
        u, dudt = mean_flow_jvp(lambda zz, tt, r=r: net(torch.cat([zz, tt[:, None], (tt - r)[:, None]], 1)), z, t,
                                v, "autograd")
        loss, _ = adaptive_loss(u - meanflow_target(v, dudt if with_jvp_term else 0 * dudt, t, r), 1.0, 1e-3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def _two_point_velocity(z, t):
    return (z - torch.tanh(z * (1 - t[:, None]) / t[:, None] ** 2)) / t[:, None]


def test_one_mean_flow_step_reaches_both_modes_where_the_teachers_euler_step_collapses():
    """The paper's claim in miniature: one step of the learned average velocity lands near the data (+-1, both
    modes), the teacher's one Euler step lands on the mean 0, and without the JVP term the student is that."""
    z1 = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1))
    ones = torch.ones(2000)
    teacher = z1 - _two_point_velocity(z1, ones)
    assert teacher.abs().max() < 1e-6
    one_step = {}
    for jvp in (True, False):
        net = _train_toy_mean_flow(jvp)
        with torch.no_grad():
            one_step[jvp] = z1 - net(torch.cat([z1, ones[:, None], ones[:, None]], 1))  # t = 1, h = 1
    distance = {jvp: (x.abs() - 1).abs().mean().item() for jvp, x in one_step.items()}  # to the nearer mode
    assert distance[True] < 0.35 and 0.35 < (one_step[True] > 0).float().mean() < 0.65  # measured: 0.27
    assert distance[False] > 0.6  # measured: 0.74 (the teacher's step: 1.0)


# --- the student ---------------------------------------------------------------------------------------


def test_at_init_the_student_is_the_teacher_for_every_interval(tiny_flow_model):
    recipe = tiny_recipe(tiny_flow_model, guidance_scale=1.0)
    batch = batch_of(tiny_flow_model, ["a red cube", "a green torus"])
    z = torch.randn(2, 4, 8, 8)
    t, r = torch.tensor([0.8, 0.3]), torch.tensor([0.1, 0.0])
    with torch.no_grad():
        teacher = teacher_velocity(recipe.teacher, z, t, batch, 1.0)
        assert torch.equal(recipe.student(z, t, r, batch.cond), teacher)
        nn.init.normal_(recipe.student.interval_embedder.linear_1.weight)
        nn.init.normal_(recipe.student.interval_embedder.linear_2.weight)
        assert torch.equal(recipe.student(z, t, t, batch.cond), teacher)  # h = 0: zero embedding, any weights
        assert not torch.allclose(recipe.student(z, t, r, batch.cond), teacher)


def test_with_r_equal_t_the_untrained_students_loss_is_zero_and_guidance_makes_it_positive(tiny_flow_model):
    latents = torch.randn(2, 4, 8, 8)
    batch = batch_of(tiny_flow_model, ["a red cube", "a blue cone"], latents)
    plain = tiny_recipe(tiny_flow_model, guidance_scale=1.0, ratio_r_neq_t=0.0)
    zero = plain.loss(batch, "student", 0, torch.Generator().manual_seed(0))  # math vs fused attention: rounding
    assert zero.terms["mse"] < 1e-12 and zero.total.item() < 1e-7
    guided = tiny_recipe(tiny_flow_model, guidance_scale=3.0, ratio_r_neq_t=0.0)
    loss = guided.loss(batch, "student", 0, torch.Generator().manual_seed(0))
    assert loss.terms["mse"] > 1e-6 and loss.terms["r_neq_t"] == 0.0


def test_guided_vanilla_meanflow_mixes_the_data_velocity_with_the_students_unconditional_one(tiny_flow_model):
    """The MeanFlow paper's CFG without a teacher: v = w (eps - x0) + (1 - w) u(z_t, t, t | empty) on kept rows,
    plain eps - x0 on the rows whose prompt was dropped (and those rows train on the empty prompt)."""
    recipe = tiny_recipe(tiny_flow_model, teacher_velocity=False, guidance_scale=3.0, cond_dropout=0.5)
    batch = batch_of(tiny_flow_model, ["a red cube", "a blue cone", "a green torus", "a cyan sphere"] * 2)
    dropped_batch, dropped = recipe.drop_captions(batch, torch.Generator().manual_seed(3))
    assert 0 < dropped.sum() < len(dropped)
    for i, d in enumerate(dropped.tolist()):
        want = batch.uncond if d else batch.cond
        assert torch.equal(dropped_batch.cond.embeds[i], want.embeds[i])
    x0, eps, z = (torch.randn(8, 4, 8, 8) for _ in range(3))
    t = torch.rand(8)
    v = recipe.velocity(z, t, x0, eps, dropped_batch, dropped)
    with torch.no_grad():
        u_uncond = recipe.student(z, t, t, batch.uncond)
    want = torch.where(dropped.view(-1, 1, 1, 1), eps - x0, 3.0 * (eps - x0) - 2.0 * u_uncond)
    assert torch.allclose(v, want, atol=1e-6)
    unguided = tiny_recipe(tiny_flow_model, teacher_velocity=False, guidance_scale=1.0)
    assert unguided.drop_captions(batch, torch.Generator())[1] is None


@pytest.mark.parametrize("overrides", [{"jvp": "finite_difference"},
                                       {"teacher_velocity": False, "guidance_scale": 1.0},
                                       {"teacher_velocity": False, "guidance_scale": 2.0},
                                       {"bootstrap": True, "guidance_scale": 1.0}])
def test_every_variant_gives_a_finite_loss_with_gradients(tiny_flow_model, overrides):
    recipe = tiny_recipe(tiny_flow_model, ratio_r_neq_t=1.0, **overrides)
    batch = batch_of(tiny_flow_model, ["a red cube", "a blue cone"], torch.randn(2, 4, 8, 8))
    loss = recipe.loss(batch, "student", 0, torch.Generator().manual_seed(0))
    loss.total.backward()
    assert math.isfinite(loss.total.item()) and loss.terms["r_neq_t"] == 1.0
    assert recipe.student.interval_embedder.linear_2.weight.grad.abs().sum() > 0


# --- user errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("recipe.ratio_r_neq_t=1.5", "recipe.ratio_r_neq_t"),
    ("recipe.jvp=forward", "recipe.jvp"),
    ("recipe.fd_step=0", "recipe.fd_step"),
    ("recipe.adaptive_p=-1", "recipe.adaptive_p"),
    ("recipe.time_std=0", "recipe.time_std"),
    ("recipe.embedder_frequency_dim=15", "recipe.embedder_frequency_dim"),
    ("recipe.cond_dropout=1.5", "recipe.cond_dropout"),
    ("recipe.bootstrap=true", "recipe.guidance_scale"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(DistillConfig, None, ["recipe.kind=meanflow", override])


def test_a_unet_teacher_and_missing_latents_are_user_errors(tiny_flow_model):
    from tiny_pipelines import tiny_unet, unet_model

    with pytest.raises(UserError, match="flow-matching teacher"):
        MeanFlowRecipe(unet_model(tiny_unet()), MeanFlowConfig())
    recipe = tiny_recipe(tiny_flow_model)
    with pytest.raises(UserError, match="data.with_latents"):
        recipe.loss(batch_of(tiny_flow_model, ["a red cube"]), "student", 0, torch.Generator())
