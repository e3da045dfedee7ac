"""LCM / LCM-LoRA: the skipping-step grid is the export's, the solver is one guided DDIM step, the boundary
condition, the EMA target, the w-embedding student's init, the LoRA round trip through stock diffusers, and
training through the Trainer (finite, learning, exactly resumable)."""

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from gendistill.config import from_dict
from gendistill.diffusion.adapters import VPDenoiser, guidance_embedding
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.samplers import final_sample, sample_euler
from gendistill.diffusion.schedules import LCMSchedule, vp_sigmas_from_alphas_cumprod
from gendistill.distill.consistency import (LCMConfig, LCMRecipe, SkippingSteps, consistency_distance,
                                            guidance_student)
from gendistill.backends.lora import has_lora, lora_student, merge_lora, save_lora
from gendistill.distill.models import DistillBatch
from gendistill.errors import UserError
from gendistill.recipe import Loss, Update
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer
from tiny_pipelines import SD_SCHEDULER, tiny_sd_pipeline, tiny_unet, unet_model

AC = DDIMScheduler(**SD_SCHEDULER).alphas_cumprod
SIGMAS = vp_sigmas_from_alphas_cumprod(AC)


def teacher(seed=0):
    torch.manual_seed(seed)
    return tiny_unet().eval()


def make_batch(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    cond = TextCondition(torch.randn(n, 6, 32, generator=g))
    uncond = TextCondition(torch.randn(n, 6, 32, generator=g))
    return DistillBatch(["a red cube"] * n, cond, uncond, torch.randn(n, 4, 8, 8, generator=g))


def make_recipe(seed=0, prediction="epsilon", **config):
    model = unet_model(teacher(seed), prediction)
    torch.manual_seed(seed + 100)  # LoRA A init
    return LCMRecipe(model, LCMConfig(**config))


def update(phase="student", step=0):
    """What the trainer tells ``after_update`` after an optimizer step (the LCM target reads nothing of it)."""
    return Update(phase, step, {}, Loss(torch.zeros(())))


def perturb(module, scale=0.05, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


# --- grid and solver ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [50, 4])
def test_grid_is_what_the_exported_lcm_scheduler_samples_from(n):
    grid = SkippingSteps(AC, n)
    k = 1000 // n
    assert grid.skip == k
    assert sorted(grid.start_timesteps.tolist()) == sorted(LCMSchedule(AC, n).timesteps(n).tolist())
    for steps in (1, 2, 4):  # every few-step export visits grid points only
        assert set(LCMSchedule(AC, n).timesteps(steps).tolist()) <= set(grid.start_timesteps.tolist())
    start, end = grid.draw(2000, torch.Generator().manual_seed(0))
    assert set(start.tolist()) == set(grid.start_timesteps.tolist())
    assert torch.equal(end, (start - k).clamp(min=0))
    assert end.min().item() == 0  # the last grid step ends on timestep 0 (the boundary)


def test_student_and_target_are_called_at_grid_timesteps():
    recipe = make_recipe(num_ddim_timesteps=4)
    seen = {"student": [], "target": []}
    for name, unet in (("student", recipe.models.student_unet), ("target", recipe.target_unet)):
        unet.register_forward_pre_hook(lambda m, args, name=name: seen[name].extend(args[1].tolist()))
    for i in range(12):
        recipe.loss(make_batch(), "student", i, torch.Generator().manual_seed(i))
    grid = set(SkippingSteps(AC, 4).start_timesteps.tolist())
    assert {round(t) for t in seen["student"]} == grid == {249, 499, 749, 999}
    assert max(abs(t - round(t)) for t in seen["student"]) < 1e-3
    assert {round(t) for t in seen["target"]} == {0, 249, 499, 749}


def test_skipping_step_solver_is_one_guided_ddim_step_of_sample_euler():
    recipe = make_recipe(guidance="embedding")
    batch = make_batch()
    start, end = torch.tensor([19, 499, 999]), torch.tensor([0, 479, 979])
    w = torch.tensor([1.0, 3.0, 7.5])  # 1: no guidance (diffusers' rule)
    x = batch.latents + SIGMAS[start].float().reshape(-1, 1, 1, 1) * torch.randn(3, 4, 8, 8)
    with torch.no_grad():
        ours = recipe.teacher_step(batch, x, SIGMAS[start], SIGMAS[end], w)
        for i in range(3):
            cfg = CFGDenoiser(recipe.models.teacher(), TextCondition(batch.uncond.embeds[i:i + 1]), float(w[i]))
            sigmas = torch.stack([SIGMAS[start[i]], SIGMAS[end[i]]])
            ref = final_sample(sample_euler(cfg, x[i:i + 1], sigmas, TextCondition(batch.cond.embeds[i:i + 1])))
            assert torch.allclose(ours[i:i + 1], ref, rtol=1e-5, atol=1e-5)


# --- boundary condition, target, initial students ----------------------------------------------------


def test_boundary_condition_returns_x_at_sigma_zero_whatever_the_network():
    recipe = make_recipe()
    x = torch.randn(2, 4, 8, 8)
    w = torch.tensor([4.0, 9.0])
    for _ in range(2):
        f = recipe.consistency_fn(recipe.models.student_unet, w)
        with torch.no_grad():
            assert torch.equal(f(x, torch.zeros(2), make_batch(2).cond), x)
            at_t0 = f(x, SIGMAS[[0, 0]], make_batch(2).cond)  # timestep 0: c_skip = 1, c_out = 0
        assert torch.allclose(at_t0, x / (1 + SIGMAS[0] ** 2).sqrt().float(), atol=1e-6)
        perturb(recipe.models.student_unet, scale=0.5)


def test_ema_target_with_decay_zero_is_a_copy_and_decay_mixes():
    recipe = make_recipe(target_ema=0.0)
    perturb(recipe.models.student_unet)
    batch, w = make_batch(), torch.tensor([5.0, 6.0, 7.0])
    x, sigma = torch.randn(3, 4, 8, 8), SIGMAS[[0, 479, 979]]
    with torch.no_grad():
        before = recipe.consistency_fn(recipe.target_unet, w)(x, sigma, batch.cond)
        online = recipe.consistency_fn(recipe.models.student_unet, w)(x, sigma, batch.cond)
        assert not torch.allclose(before, online)
        recipe.after_update(update())
        after = recipe.consistency_fn(recipe.target_unet, w)(x, sigma, batch.cond)
    assert torch.equal(after, online)

    half = make_recipe(target_ema=0.5)
    old = [p.clone() for p in half.target_unet.parameters()]
    perturb(half.models.student_unet)
    half.after_update(update())
    for t, s, o in zip(half.target_unet.parameters(), half.models.student_unet.parameters(), old):
        assert torch.allclose(t, 0.5 * o + 0.5 * s, atol=1e-7)


def test_new_w_embedding_student_equals_the_teacher_at_every_scale():
    base = teacher()
    student = guidance_student(base, 256)
    assert student.config.time_cond_proj_dim == 256 and base.config.time_cond_proj_dim is None
    assert torch.count_nonzero(student.time_embedding.cond_proj.weight) == 0
    x, cond = torch.randn(3, 4, 8, 8), make_batch().cond
    sigma = SIGMAS[[10, 400, 900]]
    with torch.no_grad():
        ref = VPDenoiser(base, AC)(x, sigma, cond)
        for w in (1.0, 4.0, 16.0):
            emb = guidance_embedding(torch.full((3,), w), 256)
            assert torch.allclose(VPDenoiser(student, AC, timestep_cond=emb)(x, sigma, cond), ref, atol=1e-6)


def test_lora_student_starts_as_the_teacher_and_trains_only_adapters():
    recipe = make_recipe(guidance="fixed", guidance_scale=3.0, lora_rank=4, target_ema=0.0)
    student = recipe.models.student_unet
    (phase,) = recipe.phases()
    names = {id(p): n for n, p in student.named_parameters()}
    assert phase.parameters and all(".lora_" in names[id(p)] for p in phase.parameters)
    assert sum(p.requires_grad for p in student.parameters()) == len(phase.parameters)
    x, cond, t = torch.randn(2, 4, 8, 8), make_batch(2).cond, torch.tensor([3.0, 700.0])
    with torch.no_grad():
        assert torch.allclose(student(x, t, cond.embeds).sample, recipe.models.teacher_unet(x, t, cond.embeds).sample,
                              atol=1e-6)


def test_config_checks_and_loads():
    cfg = from_dict(LCMConfig, {"kind": "lcm", "guidance": "fixed", "lora_rank": 8, "lora_alpha": 16})
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.guidance) == (8, 16.0, "fixed")
    with pytest.raises(UserError, match="recipe.lora_rank > 0 needs recipe.guidance 'fixed'"):
        from_dict(LCMConfig, {"lora_rank": 8}, "recipe")
    with pytest.raises(UserError, match="unknown config key 'huber'"):
        from_dict(LCMConfig, {"huber": 0.1})
    with pytest.raises(UserError, match="w_min"):
        LCMConfig(w_min=9.0, w_max=3.0).check("lcm")
    with pytest.raises(UserError, match="lcm.w_min"):  # a recipe checks a config built by hand
        make_recipe(w_min=9.0, w_max=3.0)


def test_pseudo_huber_closed_form():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([4.0, 3.0])
    assert torch.isclose(consistency_distance(a, b, "huber", 3.0), torch.tensor((5.0 - 3.0) / 2))
    assert torch.isclose(consistency_distance(a, b, "l2"), torch.tensor(8.0))


# --- LoRA export ------------------------------------------------------------------------------------


def trained_lora_student(pipe, rank=4, alpha=8.0):
    torch.manual_seed(3)
    student = lora_student(pipe.unet, rank, alpha)
    perturb(student, scale=0.1)  # as if trained: B is no longer zero
    return student


@pytest.mark.parametrize("fuse", [False, True])
def test_saved_lora_loads_onto_the_teacher_pipeline_as_the_trained_student(tmp_path, fuse):
    pipe = tiny_sd_pipeline()
    student = trained_lora_student(pipe)
    path = save_lora(student, tmp_path / "lora")
    assert path.is_file()
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 600.0]), torch.randn(2, 5, 32)
    with torch.no_grad():
        want = student(x, t, e).sample
        assert (pipe.unet(x, t, e).sample - want).abs().max() > 1e-2  # the adapters matter
        pipe.load_lora_weights(tmp_path / "lora")
        if fuse:
            pipe.fuse_lora()
        got = pipe.unet(x, t, e).sample
    assert (got - want).abs().max().item() < 1e-5


def test_merged_lora_is_a_plain_unet_equal_to_the_student(tmp_path):
    pipe = tiny_sd_pipeline()
    student = trained_lora_student(pipe)
    merged = merge_lora(student)
    assert isinstance(merged, UNet2DConditionModel) and not has_lora(merged) and has_lora(student)
    assert set(merged.state_dict()) == set(pipe.unet.state_dict())
    merged.save_pretrained(tmp_path / "unet")
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    x, t, e = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 600.0]), torch.randn(2, 5, 32)
    with torch.no_grad():
        want = student(x, t, e).sample
        assert (merged(x, t, e).sample - want).abs().max().item() < 1e-5
        assert (reloaded(x, t, e).sample - want).abs().max().item() < 1e-5


# --- training through the Trainer -----------------------------------------------------------------------


def fixed_batch(step, generator):
    return make_batch(2, seed=5)


def trainer_config(steps, **overrides):
    base = dict(steps=steps, seed=2, checkpoint_every=2, log_every=1,
                optimizers={"student": OptimizerConfig(lr=3e-4)})
    return TrainerConfig(**{**base, **overrides})


def loss_on_fixed_draws(recipe, draws=8):
    with torch.no_grad():
        return sum(recipe.loss(fixed_batch(0, None), "student", 0, torch.Generator().manual_seed(100 + i)).total
                   for i in range(draws)).item() / draws


def test_a_small_gradient_step_lowers_the_loss_and_only_the_student_gets_gradients():
    recipe = make_recipe(num_ddim_timesteps=4, target_ema=0.5)
    recipe.target_unet.load_state_dict(recipe.models.student_unet.state_dict())
    perturb(recipe.models.student_unet, scale=0.01)  # student and target differ, as during training
    draw = lambda: recipe.loss(make_batch(), "student", 0, torch.Generator().manual_seed(4)).total
    loss = draw()
    loss.backward()
    (phase,) = recipe.phases()
    assert all(p.grad is not None for p in phase.parameters)
    assert all(p.grad is None for m in ("teacher", "target") for p in recipe.modules()[m].parameters())
    with torch.no_grad():
        for p in phase.parameters:
            p -= 1e-4 * p.grad / p.grad.norm().clamp(min=1e-12)
        assert draw() < loss


def test_training_is_finite_and_reduces_the_loss_on_a_fixed_batch(tmp_path):
    """Toy: distil guidance 3 into a one-step student (one grid point, so the target is the teacher's DDIM
    step to timestep 0 through the boundary condition: plain regression), one fixed batch of latents."""
    recipe = make_recipe(prediction="v_prediction", num_ddim_timesteps=1, guidance="fixed", guidance_scale=3.0,
                         loss="l2", target_ema=0.0)
    before = loss_on_fixed_draws(recipe)
    config = trainer_config(20, checkpoint_every=0, optimizers={"student": OptimizerConfig(lr=3e-5)})
    result = Trainer(recipe, config, tmp_path, fixed_batch, progress=False).fit()
    assert all(torch.isfinite(torch.tensor([row["student/loss"] for row in result.history])))
    after = loss_on_fixed_draws(recipe)
    assert after < 0.85 * before, (before, after)  # measured: 0.71 (every one of 64 draws went down)


def weights(recipe):
    return {f"{m}.{k}": v.clone() for m, mod in recipe.modules().items() for k, v in mod.state_dict().items()}


@pytest.mark.parametrize("config", [dict(guidance="embedding", target_ema=0.9),
                                    dict(guidance="fixed", lora_rank=2, target_ema=0.5)], ids=["full", "lora"])
def test_resume_is_exact_including_the_ema_target(tmp_path, config):
    straight = make_recipe(num_ddim_timesteps=10, **config)
    Trainer(straight, trainer_config(3), tmp_path / "a", fixed_batch, progress=False).fit()
    interrupted = make_recipe(num_ddim_timesteps=10, **config)
    Trainer(interrupted, trainer_config(2), tmp_path / "b", fixed_batch, progress=False).fit()
    resumed = make_recipe(num_ddim_timesteps=10, **config)
    Trainer(resumed, trainer_config(3), tmp_path / "b", fixed_batch, progress=False).fit(resume=True)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = weights(make_recipe(num_ddim_timesteps=10, **config))
    moved = [k for k in a if k.startswith("target.") and not torch.equal(a[k], start[k])]
    assert moved  # the target followed the student
    frozen = [k for k in a if k.startswith("teacher.")]
    assert all(torch.equal(a[k], start[k]) for k in frozen)
    if config.get("lora_rank"):
        base = [k for k in a if k.startswith("student.") and ".lora_" not in k]
        assert all(torch.equal(a[k], start[k]) for k in base)  # only the adapters trained
