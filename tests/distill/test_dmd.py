"""DMD2: zero DM gradient when fake == real, training only at the exported LCMScheduler timesteps, phases and
their ratios, the LoRA fake score, the GAN head's gradient paths, and trainer runs that resume exactly."""

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler
from safetensors.torch import load_file

from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.samplers import final_sample, initial_scale, sample_consistency, sample_euler
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.schedules import DiscreteVPSchedule
from gendistill.distill.dmd import DMD2Config, DMD2Recipe
from gendistill.distill.dmd_gan import frozen, generator_gan_loss
from gendistill.diffusion.timesteps import TimestepRange
from gendistill.distill.models import DistillBatch
from gendistill.errors import UserError
from gendistill.train.checkpoint import latest_checkpoint
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer
from tiny_pipelines import SD_SCHEDULER, tiny_unet, unet_model

ALPHAS_CUMPROD = DDIMScheduler(**SD_SCHEDULER).alphas_cumprod
_g = torch.Generator().manual_seed(123)
PROMPT_EMBEDS = torch.randn(4, 5, 32, generator=_g)
REAL_LATENTS = 0.5 * torch.randn(4, 4, 8, 8, generator=_g)


def tiny_model(seed=0):
    """The teacher: a tiny UNet on Stable Diffusion's schedule."""
    torch.manual_seed(seed)
    return unet_model(tiny_unet())


def batch_fn(step, generator, size=2):
    rows = torch.randint(0, len(PROMPT_EMBEDS), (size,), generator=generator)
    return DistillBatch([f"prompt {int(i)}" for i in rows], TextCondition(PROMPT_EMBEDS[rows]),
                        TextCondition(torch.zeros(size, 5, 32)), REAL_LATENTS[rows])


def fixed_batch(size=2):
    return batch_fn(0, torch.Generator().manual_seed(0), size)


def grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("lora_rank,steps", [(0, 1), (4, 2)])
def test_dm_gradient_is_exactly_zero_when_the_fake_score_equals_the_real_one(lora_rank, steps):
    """Fake initialised from the teacher (LoRA's B starts at 0) and no CFG: real == fake bit for bit."""
    recipe = DMD2Recipe(tiny_model(), DMD2Config(guidance_scale=1.0, fake_lora_rank=lora_rank, student_steps=steps))
    loss = recipe.loss(fixed_batch(), "generator", 0, torch.Generator().manual_seed(1))
    loss.total.backward()
    assert loss.total.item() == 0.0 and loss.terms["dm_grad"] == 0.0
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads(recipe.models.student_unet))
    guided = DMD2Recipe(tiny_model(), DMD2Config(guidance_scale=3.0, fake_lora_rank=lora_rank, student_steps=steps))
    assert guided.loss(fixed_batch(), "generator", 0, torch.Generator().manual_seed(1)).terms["dm_grad"] > 0


@pytest.mark.parametrize("original_steps,steps", [(None, 4), (8, 3), (None, 1)])
def test_the_student_samples_exactly_as_the_exported_lcm_scheduler(original_steps, steps):
    """The recipe's student and sigmas, driven by the consistency sampler, reproduce a stock LCMScheduler
    loop (original_inference_steps=S, the config's timestep_scaling) on the same UNet and noise."""
    config = DMD2Config(student_steps=steps, original_steps=original_steps)
    recipe = DMD2Recipe(tiny_model(), config)
    unet, cond = recipe.models.student_unet, TextCondition(PROMPT_EMBEDS[:2])
    scheduler = LCMScheduler(**{**SD_SCHEDULER, "set_alpha_to_one": True}, timestep_scaling=config.timestep_scaling,
                             original_inference_steps=config.resolved_original_steps)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == recipe.student_timesteps.tolist()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    latents, generator = noise.clone(), torch.Generator().manual_seed(4)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(latents, t, encoder_hidden_states=cond.embeds).sample
            latents, denoised = scheduler.step(eps, t, latents, generator=generator, return_dict=False)
        x = initial_scale(float(recipe.student_sigmas[0]), "vp") * noise
        ours = final_sample(sample_consistency(recipe.student, x, recipe.student_sigmas, cond,
                                               generator=torch.Generator().manual_seed(4)))
    assert (ours - denoised).abs().max().item() <= 1e-4


def test_training_evaluates_the_student_only_at_its_exported_timesteps():
    """Record every timestep the student UNet sees in both phases (backward simulation included)."""
    config = DMD2Config(student_steps=3, original_steps=6, regression_weight=1.0, regression_pairs=2,
                        regression_teacher_steps=2, gan_weight=1e-2, fake_updates=1)
    recipe = DMD2Recipe(tiny_model(), config, regression_prompts=fixed_batch())
    seen: list[float] = []
    recipe.models.student_unet.register_forward_pre_hook(lambda module, args: seen.extend(args[1].tolist()))
    for seed in range(6):
        for phase in ("fake_score", "generator"):
            recipe.loss(fixed_batch(), phase, 0, torch.Generator().manual_seed(seed))
    allowed = set(recipe.student_timesteps.tolist())
    assert set(seen) == allowed == {995, 663, 331}  # every step gets trained, nothing else is ever seen


def test_phases_ratios_and_checkpointed_modules():
    config = DMD2Config(fake_updates=3, gan_weight=1e-3, regression_weight=0.5, regression_pairs=3,
                        regression_teacher_steps=2)
    recipe = DMD2Recipe(tiny_model(), config, regression_prompts=fixed_batch())
    fake, gen = recipe.phases()
    assert (fake.name, fake.updates_per_step, gen.name, gen.updates_per_step) == ("fake_score", 3, "generator", 1)
    expected_fake = {*map(id, recipe.fake_unet.parameters()), *map(id, recipe.gan_head.parameters())}
    assert set(map(id, fake.parameters)) == expected_fake
    assert set(map(id, gen.parameters)) == set(map(id, recipe.models.student_unet.parameters()))
    assert set(recipe.modules()) == {"student", "fake_score", "teacher", "gan_head", "regression_pairs"}
    assert recipe.ema_module() == "student"
    pairs = recipe.modules()["regression_pairs"]
    assert {"noise", "target", "embeds"} <= set(pairs.state_dict())


def test_regression_pairs_are_the_guided_teachers_ddim_outputs():
    config = DMD2Config(regression_weight=1.0, regression_pairs=3, regression_teacher_steps=3, guidance_scale=2.0)
    prompts = fixed_batch()
    recipe = DMD2Recipe(tiny_model(), config, regression_prompts=prompts)
    pairs = recipe.pairs
    sigmas = DiscreteVPSchedule(ALPHAS_CUMPROD, "trailing").sigmas(3)
    row = 2  # the third pair cycles back to the first prompt
    cond = TextCondition(prompts.cond.embeds[[0]])
    teacher = CFGDenoiser(recipe.models.teacher(), TextCondition(prompts.uncond.embeds[[0]]), 2.0)
    x = initial_scale(float(sigmas[0]), "vp") * pairs.noise[[row]]
    with torch.no_grad():
        expected = final_sample(sample_euler(teacher, x, sigmas, cond))
    assert torch.allclose(pairs.target[[row]], expected, atol=1e-5)
    assert torch.equal(pairs.embeds[row], prompts.cond.embeds[0])


def test_lora_fake_score_trains_only_its_adapters():
    recipe = DMD2Recipe(tiny_model(), DMD2Config(fake_lora_rank=2))
    names = {id(p): n for n, p in recipe.fake_unet.named_parameters()}
    fake_phase = recipe.phases()[0]
    assert fake_phase.parameters and all("lora_" in names[id(p)] for p in fake_phase.parameters)
    recipe.loss(fixed_batch(), "fake_score", 0, torch.Generator().manual_seed(0)).total.backward()
    for name, p in recipe.fake_unet.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    assert all(g is None for g in grads(recipe.models.student_unet) + grads(recipe.models.teacher_unet))


def test_gan_head_gradients_go_to_the_head_and_fake_score_only_in_the_fake_phase():
    recipe = DMD2Recipe(tiny_model(), DMD2Config(gan_weight=1e-2, student_steps=2))
    batch, gen = fixed_batch(), torch.Generator().manual_seed(0)
    recipe.gan_logits(batch.latents, batch.cond, gen).sum().backward()  # the classifier's path alone
    assert all(g is not None and g.abs().sum() > 0 for g in grads(recipe.gan_head))
    assert recipe.fake_unet.mid_block.resnets[0].conv1.weight.grad.abs().sum() > 0
    assert all(g is None for g in grads(recipe.models.student_unet))

    for module in (recipe.gan_head, recipe.fake_unet, recipe.models.student_unet):
        module.zero_grad(set_to_none=True)
    loss = recipe.loss(batch, "generator", 0, torch.Generator().manual_seed(1))
    loss.total.backward()
    assert "gan" in loss.terms
    assert all(g is None for g in grads(recipe.gan_head) + grads(recipe.fake_unet))
    assert sum(g.abs().sum() for g in grads(recipe.models.student_unet) if g is not None) > 0
    assert all(p.requires_grad for p in recipe.fake_unet.parameters())  # flags restored after the frozen block

    recipe.models.student_unet.zero_grad(set_to_none=True)
    x0 = recipe.generate(batch, torch.Generator().manual_seed(2))
    with frozen(recipe.fake_unet, recipe.gan_head):
        generator_gan_loss(recipe.gan_logits(x0, batch.cond, gen)).backward()  # the GAN term alone
    assert sum(g.abs().sum() for g in grads(recipe.models.student_unet) if g is not None) > 0


@pytest.mark.parametrize("config,message", [
    (DMD2Config(student_steps=4, original_steps=2), "original_steps"),
    (DMD2Config(timesteps=TimestepRange(0.5, 0.1)), "dmd2.timesteps.t_max"),
    (DMD2Config(regression_weight=1.0), "regression pairs"),
])
def test_bad_settings_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        DMD2Recipe(tiny_model(), config)


def test_gan_needs_real_latents():
    recipe = DMD2Recipe(tiny_model(), DMD2Config(gan_weight=1e-3))
    batch = fixed_batch()
    batch.latents = None
    with pytest.raises(UserError, match="real latents"):
        recipe.loss(batch, "fake_score", 0, torch.Generator().manual_seed(0))


def trainer_config(steps):
    return TrainerConfig(steps=steps, seed=5, checkpoint_every=2, log_every=1, ema_decay=0.5,
                         optimizers={"fake_score": OptimizerConfig(lr=1e-3), "generator": OptimizerConfig(lr=1e-4)})


def full_config():
    return DMD2Config(student_steps=2, fake_updates=2, fake_lora_rank=2, gan_weight=1e-2, regression_weight=0.5,
                      regression_pairs=3, regression_teacher_steps=2)


def weights(recipe):
    return {f"{m}.{k}": v.clone() for m, mod in recipe.modules().items() for k, v in mod.state_dict().items()}


def test_trainer_steps_are_finite_follow_the_ratio_and_resume_exactly(tmp_path):
    straight = DMD2Recipe(tiny_model(), full_config(), regression_prompts=fixed_batch())
    calls = []
    loss = straight.loss
    straight.loss = lambda batch, phase, step, generator: calls.append(phase) or loss(batch, phase, step, generator)
    result = Trainer(straight, trainer_config(4), tmp_path / "a", batch_fn, progress=False).fit()
    assert calls == ["fake_score", "fake_score", "generator"] * 4
    for row in result.history:
        assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
    assert {"generator/dm", "generator/gan", "generator/regression", "fake_score/denoise", "fake_score/gan"} <= set(
        result.history[-1])

    Trainer(DMD2Recipe(tiny_model(), full_config(), fixed_batch()), trainer_config(2), tmp_path / "b", batch_fn,
            progress=False).fit()
    resumed = DMD2Recipe(tiny_model(seed=9), full_config(), fixed_batch())  # a fresh process, other init
    Trainer(resumed, trainer_config(4), tmp_path / "b", batch_fn, progress=False).fit(resume=True)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (load_file(latest_checkpoint(tmp_path / run / "checkpoints") / "ema.safetensors") for run in "ab")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_regression_term_falls_while_the_trainer_runs_every_term(tmp_path):
    """The trivially learnable part of the generator's loss: matching 2 stored teacher outputs from their noise.
    Measured on fixed draws before and after 8 trainer steps that also apply the DM gradient."""
    config = DMD2Config(fake_updates=1, regression_weight=10.0, regression_pairs=2, regression_teacher_steps=2)
    recipe = DMD2Recipe(tiny_model(), config, regression_prompts=fixed_batch())

    def regression():
        with torch.no_grad():
            return recipe.regression_loss(4, torch.Generator().manual_seed(7)).item()

    before = regression()
    cfg = TrainerConfig(steps=8, seed=1, checkpoint_every=0, optimizers={
        "fake_score": OptimizerConfig(lr=1e-3, warmup_steps=4), "generator": OptimizerConfig(lr=1e-4, warmup_steps=4)})
    Trainer(recipe, cfg, tmp_path, batch_fn, progress=False).fit()
    assert regression() < 0.6 * before


def test_fake_score_fits_the_students_samples():
    """A few fake-score updates on fixed draws (fixed student samples, sigmas, noise) reduce that loss."""
    recipe = DMD2Recipe(tiny_model(), DMD2Config())
    optimizer = torch.optim.AdamW(recipe.phases()[0].parameters, lr=1e-3)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = recipe.loss(fixed_batch(), "fake_score", 0, torch.Generator().manual_seed(7)).total
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(g is None for g in grads(recipe.models.student_unet))  # the samples carry no gradient
