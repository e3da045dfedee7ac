"""Phased DMD: the subinterval score-matching target against closed forms (Gaussian and Gaussian-mixture data),
phases trained in order, every network only at its own sigmas, and the exported folder sampled by stock diffusers
(its pipeline.py) and by gendistill alike."""

import pytest
import torch
from diffusers import DiffusionPipeline
from tiny_pipelines import tiny_sd_pipeline, tiny_unet, unet_model

from gendistill.backends.generation import GenerationRequest, generate
from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.gmm import GaussianMixture, GaussianMixtureDenoiser
from gendistill.diffusion.losses import denoising_loss
from gendistill.diffusion.subinterval import (
    subinterval_denoising_loss,
    subinterval_noised,
    subinterval_x0_target,
)
from gendistill.distill.export import export_student
from gendistill.distill.models import DistillBatch
from gendistill.distill.phased_dmd import PhasedDMDConfig, PhasedDMDRecipe
from gendistill.errors import UserError
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer

_g = torch.Generator().manual_seed(7)
PROMPT_EMBEDS = torch.randn(4, 5, 32, generator=_g)


def batch_fn(step, generator, size=2):
    rows = torch.randint(0, len(PROMPT_EMBEDS), (size,), generator=generator)
    return DistillBatch([f"p{int(i)}" for i in rows], TextCondition(PROMPT_EMBEDS[rows]),
                        TextCondition(torch.zeros(size, 5, 32)))


def tiny_recipe(**overrides):
    torch.manual_seed(0)
    config = PhasedDMDConfig(**{"fake_updates": 1, "steps_per_phase": 1, **overrides})
    return PhasedDMDRecipe(unet_model(tiny_unet()), config)


# --- the subinterval target against closed forms ------------------------------------------------------


def draws(x0: torch.Tensor, sigma_s: float, sigma_t: float, seed: int = 1):
    """x_s: the data noised to sigma_s (a perfect generator's phase output); then x_t and the target."""
    g = torch.Generator().manual_seed(seed)
    x_s = x0 + sigma_s * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    s, t = torch.full((len(x0),), sigma_s, dtype=x0.dtype), torch.full((len(x0),), sigma_t, dtype=x0.dtype)
    return x_s, subinterval_noised(x_s, s, t, eps), subinterval_x0_target(x_s, s, t, eps)


def test_subinterval_target_minimiser_is_the_analytic_posterior_mean_for_gaussian_data():
    """For Gaussian data E[x0 | x_t] is affine, so least squares over affine maps finds the loss's minimiser
    exactly: it is mu + S (S + sigma_t^2 I)^-1 (x_t - mu), though the regression never sees x0. Regressing on x_s
    itself (the plain x0 target, treating x_s as clean) gives another map."""
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    gaussian = GaussianMixture(torch.ones(1, dtype=torch.float64), mu[None], cov[None])
    x0 = gaussian.sample(400_000, torch.Generator().manual_seed(0))[0]
    sigma_s, sigma_t = 0.8, 1.5
    x_s, x_t, target = draws(x0, sigma_s, sigma_t)
    design = torch.cat([x_t, torch.ones(len(x_t), 1, dtype=x_t.dtype)], dim=1)
    fit = torch.linalg.lstsq(design, target).solution  # (3, 2): rows are A^T then b
    gain = cov @ torch.linalg.inv(cov + sigma_t**2 * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(fit[:2].T, gain, atol=0.01)
    assert torch.allclose(fit[2], mu - gain @ mu, atol=0.02)
    naive = torch.linalg.lstsq(design, x_s).solution
    assert (naive[:2].T - gain).abs().max() > 0.1


def test_subinterval_target_residual_is_orthogonal_to_functions_of_x_t_on_a_gaussian_mixture():
    """The minimiser of E||f(x_t) - target||^2 is E[target | x_t]: the residual against the exact mixture denoiser
    at sigma_t is uncorrelated with any function of x_t, and the loss is lowest there."""
    mixture = GaussianMixture(torch.tensor([0.3, 0.7], dtype=torch.float64),
                              torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=torch.float64),
                              torch.stack([0.3 * torch.eye(2), torch.tensor([[0.5, 0.2], [0.2, 0.4]])]).double())
    x0 = mixture.sample(200_000, torch.Generator().manual_seed(3))[0]
    sigma_s, sigma_t = 0.6, 1.2
    x_s, x_t, target = draws(x0, sigma_s, sigma_t, seed=4)
    denoised = mixture.posterior_mean(x_t, torch.full((len(x_t),), sigma_t, dtype=x_t.dtype))
    features = torch.cat([torch.ones(len(x_t), 1, dtype=x_t.dtype), x_t, torch.tanh(x_t), denoised], dim=1)
    for residual, small in ((target - denoised, True), (x_s - denoised, False)):
        correlation = (features[:, :, None] * residual[:, None, :]).mean(dim=0).abs().max()
        assert (correlation < 0.02) == small
    sigmas = torch.full((len(x0),), sigma_s, dtype=x0.dtype), torch.full((len(x0),), sigma_t, dtype=x0.dtype)
    eps = (x_t - x_s) / (sigma_t**2 - sigma_s**2) ** 0.5
    exact = GaussianMixtureDenoiser(mixture)

    def loss(denoiser):
        return subinterval_denoising_loss(denoiser, x_s, *sigmas, eps, weighting="x0").item()

    best = loss(exact)
    assert best < loss(lambda x, s, c=None: exact(x, s) * 1.05) and best < loss(lambda x, s, c=None: exact(x, s) + 0.05)


def test_with_sigma_s_zero_it_is_the_usual_denoising_loss():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    sigma = torch.tensor([0.5, 2.0, 9.0])
    denoiser = lambda x, s, c=None: 0.7 * x
    ours = subinterval_denoising_loss(denoiser, x0, torch.zeros(3), sigma, eps, weighting="eps")
    assert torch.allclose(ours, denoising_loss(denoiser, x0, sigma, eps, weighting="eps"))


# --- the recipe ---------------------------------------------------------------------------------------------


def test_phase_boundaries_are_checked_with_the_key_named():
    with pytest.raises(UserError, match="recipe.phase_boundaries"):
        PhasedDMDConfig(student_steps=4, phase_boundaries=[4]).check("recipe")
    with pytest.raises(UserError, match="recipe.phase_boundaries"):
        PhasedDMDConfig(student_steps=4, phase_boundaries=[2, 2]).check("recipe")


def test_phase_spans_split_the_grid_and_the_timesteps():
    """K = 4 on the trailing grid (999, 749, 499, 249), boundary at step 2: phase 1 takes steps 1-2 and timesteps
    above 499 (plus the margin), phase 2 steps 3-4 and timesteps up to 499."""
    recipe = tiny_recipe()
    assert recipe.grid_timesteps.tolist() == [999, 749, 499, 249] and recipe.switch_timesteps == [499]
    (high, low) = recipe.spans
    assert (high.start, high.end, high.t_low, high.t_high) == (0, 2, 519, 980)
    assert (low.start, low.end, low.t_low, low.t_high) == (2, 4, 20, 499)


def record_timesteps(module, calls: list):
    def hook(_module, args, kwargs):
        calls.append(args[1].detach().flatten().tolist())
    return module.register_forward_pre_hook(hook, with_kwargs=True)


def test_every_network_sees_only_its_own_phase():
    """Expert i runs only at its phase's grid timesteps; in phase k the fake score k alone is used, and it and
    the teacher see timesteps only inside phase k's subinterval."""
    recipe = tiny_recipe()
    grid = [round(t) for t in recipe.grid_timesteps.tolist()]
    own = [set(grid[s.start:s.end]) for s in recipe.spans]
    for step, k in ((0, 0), (1, 1)):
        experts, fakes, teacher = [[] for _ in recipe.experts], [[] for _ in recipe.fakes], []
        hooks = [record_timesteps(m, c) for m, c in zip(recipe.experts, experts)]
        hooks += [record_timesteps(m, c) for m, c in zip(recipe.fakes, fakes)]
        hooks.append(record_timesteps(recipe.models.teacher_unet, teacher))
        for seed in range(6):
            for phase in ("fake_score", "generator"):
                recipe.loss(batch_fn(0, torch.Generator().manual_seed(seed)), phase, step,
                            torch.Generator().manual_seed(seed))
        for h in hooks:
            h.remove()
        for i, calls in enumerate(experts):
            seen = {t for call in calls for t in call}
            assert all(min(abs(t - g) for g in own[i]) < 1e-3 for t in seen)
        assert experts[k] and not any(experts[i] for i in range(k + 1, len(experts)))
        assert fakes[k] and not any(fakes[i] for i in range(len(fakes)) if i != k)
        span = recipe.spans[k]
        for t in [t for call in fakes[k] + teacher for t in call]:
            assert span.t_low - 1e-3 <= t <= span.t_high + 1e-3


def test_phases_train_in_order_and_earlier_experts_stay_frozen(tmp_path):
    """steps_per_phase = 1: trainer step 1 changes only expert 1 and fake score 1; step 2 only expert 2 and fake
    score 2 (expert 1, which made step 2's inputs, is left as step 1 ended)."""
    recipe = tiny_recipe()
    snapshots = []

    def snapshot(update):
        snapshots.append((update.step, update.phase, [[p.detach().clone() for p in m.parameters()]
                                                      for m in (*recipe.experts, *recipe.fakes)]))

    recipe.after_update = snapshot
    before = [[p.detach().clone() for p in m.parameters()] for m in (*recipe.experts, *recipe.fakes)]
    config = TrainerConfig(steps=2, seed=3, checkpoint_every=0, log_every=1, optimizers={
        "fake_score": OptimizerConfig(lr=1e-3), "generator": OptimizerConfig(lr=1e-3)})
    result = Trainer(recipe, config, tmp_path, batch_fn, progress=False).fit()
    assert [row["generator/phase"] for row in result.history] == [1.0, 2.0]

    def changed(a, b):
        return [any(not torch.equal(x, y) for x, y in zip(m, n)) for m, n in zip(a, b)]

    states = [before] + [s for _, _, s in snapshots]
    # networks: expert 1, expert 2, fake 1, fake 2; updates: (0, fake), (0, gen), (1, fake), (1, gen)
    assert changed(states[0], states[1]) == [False, False, True, False]
    assert changed(states[1], states[2]) == [True, False, False, False]
    assert changed(states[2], states[3]) == [False, False, False, True]
    assert changed(states[3], states[4]) == [False, True, False, False]


def test_generator_gradient_is_zero_when_the_fake_score_equals_the_real_one():
    recipe = tiny_recipe(guidance_scale=1.0)
    for step in (0, 1):
        loss = recipe.loss(batch_fn(0, torch.Generator().manual_seed(2)), "generator", step,
                           torch.Generator().manual_seed(2))
        assert loss.total.item() == 0.0 and loss.terms["dm_grad"] == 0.0


# --- export -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny SD teacher's phased student with distinct experts, exported as the run exports it."""
    teacher = TextToImageModel(tiny_sd_pipeline(seed=0))
    bound = PhasedDMDConfig().build(teacher)
    with torch.no_grad():
        for p in bound.student_unet[1].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    folder = tmp_path_factory.mktemp("phased") / "pipeline"
    return export_student(teacher.pipe, bound.export_unet(), bound.sampling, folder, bound.pipeline_builder)


def test_stock_diffusers_switches_experts_at_the_boundary(exported):
    pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    assert (exported / "pipeline.py").is_file() and type(pipe).__name__ == "PhasedStableDiffusionPipeline"
    calls = ([], [])
    hooks = [record_timesteps(pipe.unet, calls[0]), record_timesteps(pipe.unet_2, calls[1])]
    pipe("a red cube", num_inference_steps=4, guidance_scale=1.0, output_type="latent")
    for h in hooks:
        h.remove()
    assert [round(c[0]) for c in calls[0]] == [999, 749] and [round(c[0]) for c in calls[1]] == [499, 249]
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(exported)  # diffusers runs no shipped code unasked


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_generate_auto_equals_the_stock_custom_pipeline(exported, guidance):
    pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    stock = pipe("a red cube", num_inference_steps=4, guidance_scale=guidance, output_type="latent",
                 generator=torch.Generator().manual_seed(11)).images
    model = TextToImageModel(load_pipeline(str(exported)))
    assert len(model.experts) == 2
    ours = generate(model, GenerationRequest("a red cube", steps=4, guidance=guidance, seed=11), progress=False)
    assert torch.allclose(ours.latents, stock, atol=1e-4)
    one_expert = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    one_expert.register_modules(unet_2=one_expert.unet)
    alone = one_expert("a red cube", num_inference_steps=4, guidance_scale=guidance, output_type="latent",
                       generator=torch.Generator().manual_seed(11)).images
    assert (alone - stock).abs().max() > 1e-3  # the second expert did change the sample
