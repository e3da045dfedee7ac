"""Progressive distillation: the solved x0 target, exactness against the analytic teacher, the nested
DDIM grids diffusers will sample, stage switching, and exact resume through the trainer."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gendistill.config import from_dict
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.gmm import GaussianMixture, GaussianMixtureDenoiser
from gendistill.diffusion.samplers import initial_scale, sample_euler
from gendistill.diffusion.samplers import ddim_step
from gendistill.diffusion.schedules import vp_sigmas_from_alphas_cumprod
from gendistill.distill.models import DistillBatch
from gendistill.distill.progressive import (
    ProgressiveConfig, ProgressiveRecipe, solve_x0_target, stage_grids, teacher_start,
    two_step_target, weighted_error,
)
from gendistill.errors import UserError
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer
from tiny_pipelines import tiny_unet, unet_model


def sd_alphas_cumprod(T=1000):
    """Stable Diffusion's scaled-linear schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(
        weights=torch.tensor([0.6, 0.4], dtype=torch.float64),
        means=torch.tensor([[-2.0, 1.0, 0.0], [2.0, -1.0, 1.0]], dtype=torch.float64),
        covariances=torch.stack([0.3 * torch.eye(3), 0.1 * torch.eye(3) + 0.05]).double(),
    )


def standin(module, shape=(3,)):
    """A non-diffusers module made acceptable as a teacher network (its ``.config`` gives the latent shape)."""
    module.config = SimpleNamespace(in_channels=shape[0], sample_size=shape[-1])
    return module


def betas_of(alphas_cumprod):
    """The betas whose cumulative product of ``1 - beta`` is ``alphas_cumprod``."""
    ac = alphas_cumprod.double()
    return (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()


def standin_model(module, alphas_cumprod=None, shape=(3,)):
    """A ``TextToImageModel`` of a stand-in x0-predicting network on ``alphas_cumprod`` (SD's by default)."""
    if alphas_cumprod is None:
        return unet_model(standin(module, shape), "sample")
    return unet_model(standin(module, shape), "sample", num_train_timesteps=len(alphas_cumprod),
                      trained_betas=betas_of(alphas_cumprod))


def index_on(grid, sigma, batch):
    """Per-sample position of ``sigma`` (scalar or (B,)) in ``grid``."""
    sigma = torch.as_tensor(sigma, dtype=grid.dtype).expand(batch)
    return (grid[None] - sigma[:, None]).abs().argmin(dim=1)


# --- the target -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, sigma_next", [(14.6, 3.0), (2.0, 1.9), (0.5, 0.01), (80.0, 79.0), (3.0, 0.0)])
def test_solved_x0_makes_one_ddim_step_land_on_the_two_step_result(sigma, sigma_next):
    g = torch.Generator().manual_seed(0)
    x = sigma * torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    x_next = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    sig, sig_next = torch.tensor(sigma, dtype=torch.float64), torch.tensor(sigma_next, dtype=torch.float64)
    x0 = solve_x0_target(x, x_next, sig, sig_next)
    landed = ddim_step(lambda *_: x0, x, sig, sig_next)
    assert torch.allclose(landed, x_next, atol=1e-10)
    stock = next(sample_euler(lambda *_: x0, x, torch.tensor([sigma, sigma_next], dtype=torch.float64)))
    assert torch.allclose(stock.x, x_next, atol=1e-10)  # the library's own DDIM lands there too
    if sigma_next == 0:
        assert torch.equal(x0, x_next)


def test_solved_x0_with_per_sample_sigmas():
    g = torch.Generator().manual_seed(1)
    sigma = torch.rand(6, generator=g, dtype=torch.float64) * 10 + 0.1
    sigma_next = sigma * torch.tensor([0.0, 0.1, 0.5, 0.9, 0.99, 0.0], dtype=torch.float64)
    x, x_next = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    x0 = solve_x0_target(x, x_next, sigma, sigma_next)
    assert torch.allclose(ddim_step(lambda *_: x0, x, sigma, sigma_next), x_next, atol=1e-10)


def test_exact_two_step_student_reproduces_the_teacher_on_the_2n_grid(mixture):
    """With the exact denoiser as teacher, N student DDIM steps with the solved x0 visit every other state
    of the teacher's 2N-step DDIM, and end on the same samples."""
    teacher = GaussianMixtureDenoiser(mixture)
    grids = stage_grids(sd_alphas_cumprod(), 4)

    def student(x, sigma, cond=None):
        return two_step_target(teacher, x, grids, index_on(grids.student, sigma, len(x)))

    x = initial_scale(float(grids.student[0])) * torch.randn(64, 3, dtype=torch.float64)
    fast = [step.x for step in sample_euler(student, x, grids.student)]
    slow = [step.x for step in sample_euler(teacher, x, grids.teacher)]
    assert len(fast) == 4 and len(slow) == 8
    for i, state in enumerate(fast):
        assert torch.allclose(state, slow[2 * i + 1], atol=1e-9)


def test_recipe_loss_is_zero_for_the_exact_two_step_student(mixture):
    """The recipe's loss (random steps, noised data, sigma lookup, solved target) vanishes for a student
    that is the exact two-step map of the analytic teacher, at every weighting and target."""
    exact = GaussianMixtureDenoiser(mixture)
    model = standin_model(nn.Linear(1, 1))
    for target in ("x0", "v"):
        for weighting in ("truncated_snr", "snr_plus_one"):
            config = ProgressiveConfig(start_steps=8, final_steps=2, steps_per_stage=5, guidance_scale=1.0,
                                       target=target, weighting=weighting)
            recipe = ProgressiveRecipe(model, config, student=nn.Linear(1, 1))
            grids = recipe.grids[0]
            recipe.teacher = exact
            recipe.student = lambda x, s, c=None: two_step_target(exact, x, grids, index_on(grids.student, s, len(x)))
            latents = mixture.sample(32, torch.Generator().manual_seed(2))[0]
            batch = DistillBatch([""] * 32, TextCondition(torch.zeros(32, 1, 1)), TextCondition(torch.zeros(32, 1, 1)),
                                 latents)
            loss = recipe.loss(batch, "student", 0, torch.Generator().manual_seed(3))
            assert loss.total.abs() < 1e-18 and loss.terms["student_steps"] == 4


def test_v_and_x0_targets_are_one_objective():
    g = torch.Generator().manual_seed(4)
    sigma = torch.tensor([0.05, 0.7, 3.0, 14.6], dtype=torch.float64)
    x, x0_hat, x0_target = torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64)
    for weighting in ("truncated_snr", "snr_plus_one"):
        on_x0 = weighted_error(x0_hat, x0_target, x, sigma, "x0", weighting)
        assert torch.allclose(weighted_error(x0_hat, x0_target, x, sigma, "v", weighting), on_x0)
    raw = (x0_hat - x0_target).pow(2).mean(dim=(1, 2))
    assert torch.allclose(weighted_error(x0_hat, x0_target, x, sigma, "x0", "truncated_snr"),
                          raw * torch.tensor([400.0, 1 / 0.49, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(weighted_error(x0_hat, x0_target, x, sigma, "x0", "snr_plus_one"), raw * (1 + sigma**-2))


def test_teacher_start_follows_the_teachers_own_ddim(mixture):
    """data="teacher": each sample is the teacher's DDIM trajectory from pure noise, stopped at its own step."""
    teacher = GaussianMixtureDenoiser(mixture)
    grids = stage_grids(sd_alphas_cumprod(), 4)
    noise = torch.randn(4, 3, dtype=torch.float64)
    index = torch.tensor([0, 1, 2, 3])
    x = teacher_start(teacher, noise, grids, index)
    start = noise * initial_scale(float(grids.teacher[0]))
    states = [start] + [step.x for step in sample_euler(teacher, start, grids.teacher)]
    for i in range(4):
        assert torch.allclose(x[i], states[2 * i][i], atol=1e-10)


# --- grids and config -------------------------------------------------------------------------------


def test_grids_are_the_exported_ddim_timesteps_and_nest():
    from diffusers import DDIMScheduler

    ac = sd_alphas_cumprod()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0)
    table = vp_sigmas_from_alphas_cumprod(scheduler.alphas_cumprod)
    for n in (16, 8, 4, 2, 1):
        grids = stage_grids(ac, n)
        scheduler.set_timesteps(n)
        expected = torch.cat([table[scheduler.timesteps], torch.zeros(1, dtype=torch.float64)])
        assert torch.allclose(grids.student, expected, rtol=1e-5)
        assert torch.equal(grids.teacher[::2], grids.student) and len(grids.teacher) == 2 * n + 1


def test_grids_that_do_not_nest_are_a_clear_config_error():
    ac = torch.linspace(0.99, 0.01, 13)  # 13 timesteps: the 12-step trailing grid misses one 6-step sigma
    with pytest.raises(UserError, match="12-step trailing grid does not contain every 6-step sigma"):
        stage_grids(ac, 6)
    with pytest.raises(UserError, match="14-step teacher grid, but the schedule has only 13"):
        stage_grids(ac, 7)
    model = standin_model(nn.Linear(1, 1), ac)
    with pytest.raises(UserError, match="does not contain"):  # raised before any training
        ProgressiveRecipe(model, ProgressiveConfig(start_steps=12, final_steps=6))


def test_final_steps_that_do_not_divide_the_training_timesteps_are_rejected_naming_the_choices():
    """diffusers' trailing DDIM steps from t to t - T // n: for n = 6 of 1000 it visits 999 -> 833 (the grid
    lists 832) and ends at alpha-bar[0] = 0.99915, not 1, so such a student would be exported off its grid."""
    from diffusers import DDIMScheduler

    from gendistill.distill.export import StudentSampling, student_scheduler

    model = standin_model(nn.Linear(1, 1))
    with pytest.raises(UserError) as err:
        ProgressiveRecipe(model, ProgressiveConfig(start_steps=12, final_steps=6))
    message = str(err.value)
    assert "\n" not in message and message.startswith("recipe.final_steps must divide the teacher's 1000 training")
    assert message.endswith("choose one of 1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, got 6")
    for final in (1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250):  # every listed choice exports exactly
        scheduler = student_scheduler(dict(DDIMScheduler().config), StudentSampling("ddim"))
        scheduler.set_timesteps(final)
        ts = scheduler.timesteps.tolist()
        steps_to = [t - 1000 // final for t in ts]
        assert steps_to[:-1] == ts[1:] and steps_to[-1] < 0 and scheduler.final_alpha_cumprod == 1
    ProgressiveRecipe(model, ProgressiveConfig(start_steps=10, final_steps=5))  # a divisor that is not 2^k


def test_config_chain_and_errors():
    assert ProgressiveConfig(start_steps=32, final_steps=4).student_steps() == [16, 8, 4]
    assert ProgressiveConfig(start_steps=2, final_steps=1).student_steps() == [1]
    for start, final in ((24, 4), (4, 4), (2, 4), (8, 0)):
        with pytest.raises(UserError, match="power of two"):
            ProgressiveConfig(start_steps=start, final_steps=final).student_steps()
    loaded = from_dict(ProgressiveConfig, {"kind": "progressive", "start_steps": 16, "target": "v"})
    assert loaded.start_steps == 16 and loaded.target == "v"
    with pytest.raises(UserError, match="target must be one of 'x0', 'v'"):
        from_dict(ProgressiveConfig, {"target": "eps"})


# --- stages on a tiny UNet ------------------------------------------------------------------------------


def tiny_recipe(**overrides):
    torch.manual_seed(0)
    model = unet_model(tiny_unet())
    config = dict(start_steps=16, final_steps=2, steps_per_stage=2, guidance_scale=3.0)
    return ProgressiveRecipe(model, ProgressiveConfig(**{**config, **overrides}))


def tiny_batch(step, generator, latents=True):
    cond = TextCondition(torch.randn(2, 4, 32, generator=generator))
    lat = torch.randn(2, 4, 8, 8, generator=generator) if latents else None
    return DistillBatch(["a", "b"], cond, TextCondition(torch.zeros(2, 4, 32)), lat)


def record_calls(module, log):
    def hook(mod, args, kwargs):
        log.append((args[0].shape[0], sorted({float(t) for t in args[1]})))
    return module.register_forward_pre_hook(hook, with_kwargs=True)


def trailing_timesteps(n):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing", set_alpha_to_one=True,
                              steps_offset=0)
    scheduler.set_timesteps(n)
    return {float(t) for t in scheduler.timesteps}


def test_stages_switch_at_their_steps_and_the_stage_teacher_is_the_student():
    recipe = tiny_recipe()
    assert [recipe.student_steps_at(s) for s in range(8)] == [8, 8, 4, 4, 2, 2, 2, 2]
    assert recipe.stage_start_steps() == [2, 4] and recipe.total_steps == 6 and recipe.final_steps == 2
    student, stage_teacher = recipe.models.student_unet, recipe.stage_teacher_unet
    student_calls, teacher_calls, stage_teacher_calls = [], [], []
    record_calls(student, student_calls), record_calls(recipe.models.teacher_unet, teacher_calls)
    record_calls(stage_teacher, stage_teacher_calls)
    g = torch.Generator().manual_seed(0)
    for step, (stage, steps) in enumerate([(0, 8), (0, 8), (1, 4), (1, 4), (2, 2)]):
        with torch.no_grad():
            student.conv_in.bias += 0.01  # stands in for an optimizer update
        student_calls.clear(), teacher_calls.clear(), stage_teacher_calls.clear()
        loss = recipe.loss(tiny_batch(step, g), "student", step, g)
        assert torch.isfinite(loss.total) and loss.terms["stage"] == stage and recipe.counter.value == stage
        assert set(student_calls[0][1]) <= trailing_timesteps(steps)  # the timesteps DDIMScheduler will visit
        if stage == 0:  # the real teacher, guided: conditional and unconditional in one batch
            assert [b for b, _ in teacher_calls] == [4, 4] and not stage_teacher_calls
        else:  # the previous student, unguided
            assert [b for b, _ in stage_teacher_calls] == [2, 2] and not teacher_calls
        same = all(torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                     stage_teacher.state_dict().values()))
        assert same == (step in (2, 4))  # a copy of the student right after each switch, not before


def test_data_modes():
    recipe = tiny_recipe(data="teacher")
    g = torch.Generator().manual_seed(0)
    assert torch.isfinite(recipe.loss(tiny_batch(0, g, latents=False), "student", 0, g).total)
    with pytest.raises(UserError, match="set data: teacher"):
        tiny_recipe().loss(tiny_batch(0, g, latents=False), "student", 0, g)


def trainer_config(steps):
    return TrainerConfig(steps=steps, seed=5, checkpoint_every=3, log_every=1, ema_decay=0.9,
                         optimizers={"student": OptimizerConfig(lr=1e-3)})


def state(recipe):
    return {f"{m}.{k}": v.clone() for m, mod in recipe.modules().items() for k, v in mod.state_dict().items()}


def test_trainer_runs_finite_and_resumes_exactly_across_stage_boundaries(tmp_path):
    straight = tiny_recipe()
    result = Trainer(straight, trainer_config(5), tmp_path / "a", tiny_batch, progress=False).fit()
    rows = [r for r in result.history if "student/loss" in r]
    assert [r["student/stage"] for r in rows] == [0, 0, 1, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["student/loss"])) for r in rows)
    assert straight.counter.value == 2

    Trainer(tiny_recipe(), trainer_config(3), tmp_path / "b", tiny_batch, progress=False).fit()  # "killed" at 3
    resumed = tiny_recipe()  # a fresh process: stage 0, stage teacher from the initial student
    Trainer(resumed, trainer_config(5), tmp_path / "b", tiny_batch, progress=False).fit(resume=True)
    a, b = state(straight), state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class ScaleNet(nn.Module):
    """A UNet stand-in whose output is a learnable multiple of its input."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True, **_):
        return SimpleNamespace(sample=self.a * sample)


def test_a_learnable_toy_student_reduces_the_loss(tmp_path):
    model = standin_model(ScaleNet(0.5), shape=(4, 8, 8))
    recipe = ProgressiveRecipe(model, ProgressiveConfig(start_steps=4, final_steps=2, steps_per_stage=40),
                               student=ScaleNet(0.0))
    cfg = TrainerConfig(steps=40, seed=0, checkpoint_every=0, log_every=1, grad_clip=None,
                        optimizers={"student": OptimizerConfig(lr=0.05)})
    history = Trainer(recipe, cfg, tmp_path, tiny_batch, progress=False).fit().history
    losses = [r["student/loss"] for r in history if "student/loss" in r]
    assert sum(losses[-5:]) < 0.2 * sum(losses[:5])
