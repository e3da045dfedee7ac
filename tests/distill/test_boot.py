"""BOOT: the signal reparametrisation and its DDIM step, the teacher's exact trajectory as the bootstrap loss's
fixed point (analytic Gaussian teacher), a prompts-only data path, the trainer on a tiny SD pipeline, and the
1-step export that stock diffusers samples exactly as the recipe does."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_pipelines import tiny_sd_pipeline, unet_model
from torch import Tensor, nn

from gendistill.config import from_dict, load_config
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.gmm import GaussianMixture, GaussianMixtureDenoiser
from gendistill.diffusion.samplers import (
    ddim_step,
    final_sample,
    initial_scale,
    sample_euler,
)
from gendistill.distill.boot import (
    BOOTConfig,
    BOOTRecipe,
    noise_signal,
    signal_ddim_step,
    signal_of,
    state_of,
    student_signal,
)
from gendistill.distill.models import DistillBatch
from gendistill.errors import UserError
from gendistill.jobs.distill.config import DistillConfig
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer

PRESETS = Path(__file__).parents[2] / "gendistill" / "configs" / "distill"
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
SHAPE = (3, 2, 2)  # the stand-in teacher's latent shape: 12 dimensions


def gaussian(dim: int = 12, scale: float = 0.5, seed: int = 0) -> GaussianMixture:
    """One isotropic Gaussian N(mu, scale^2 I): its DDIM ODE has a closed-form solution."""
    mu = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return GaussianMixture(torch.ones(1, dtype=torch.float64), mu[None], (scale**2 * torch.eye(dim))[None].double())


def exact_signal(mixture: GaussianMixture, eps: Tensor, sigma: Tensor, sigma_max: float) -> Tensor:
    """The signal of the teacher's exact ODE trajectory from ``x = sqrt(1 + sigma_max^2) eps``: for N(mu, s^2 I),
    ``x(sigma) - mu = (x_start - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2)``."""
    flat = eps.reshape(len(eps), -1).double()
    s2, mu = float(mixture.covariances[0, 0, 0]), mixture.means[0]
    sig = sigma.double().reshape(-1, 1)
    start = (1 + sigma_max**2) ** 0.5 * flat
    x = mu + (start - mu) * (s2 + sig**2).sqrt() / (s2 + sigma_max**2) ** 0.5
    return (x - sig * flat).reshape(eps.shape)


class OnTrajectory:
    """A student returning ``scale`` times the exact signal of the trajectory its noise starts."""

    def __init__(self, mixture: GaussianMixture, sigma_max: float, scale: float = 1.0):
        self.mixture, self.sigma_max, self.scale = mixture, sigma_max, scale

    def __call__(self, x: Tensor, sigma: Tensor, cond=None) -> Tensor:
        return (self.scale * exact_signal(self.mixture, eps_of(x, sigma), sigma, self.sigma_max)).to(x.dtype)


def standin_model():
    """A zero-terminal-SNR, x0-predicting teacher model around a stand-in network (the loss tests replace its
    denoisers by analytic ones)."""
    net = nn.Linear(1, 1)
    net.config = SimpleNamespace(in_channels=SHAPE[0], sample_size=SHAPE[-1])
    return unet_model(net, "sample", **ZERO_SNR)


def prompts_only_batch(n: int) -> DistillBatch:
    cond = TextCondition(torch.zeros(n, 1, 1))
    return DistillBatch([""] * n, cond, cond)


def eps_of(x: Tensor, sigma: Tensor) -> Tensor:
    """The noise a student call ``student_signal`` was made for (its state is ``sqrt(1 + sigma^2) eps``)."""
    return x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)).double() ** 2).sqrt().to(x.dtype)


# --- the signal -------------------------------------------------------------------------------------


def test_signal_and_state_round_trip_and_the_signal_step_is_the_ddim_step():
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([4096.0, 108.0, 14.6, 1.0, 0.03, 0.0], dtype=torch.float64)
    eps, x = torch.randn(2, 6, *SHAPE, generator=g, dtype=torch.float64)
    x = x + sigma.reshape(-1, 1, 1, 1) * eps
    assert torch.allclose(state_of(signal_of(x, eps, sigma), eps, sigma), x, rtol=1e-14, atol=1e-12)
    y = signal_of(x, eps, sigma)
    assert torch.allclose(signal_of(state_of(y, eps, sigma), eps, sigma), y, rtol=1e-14, atol=1e-12)
    teacher = GaussianMixtureDenoiser(gaussian())
    start, end = sigma[:-1], sigma[1:]
    via_x = signal_of(ddim_step(teacher, state_of(y[:-1], eps[:-1], start), start, end), eps[:-1], end)
    assert torch.allclose(signal_ddim_step(teacher, y[:-1], eps[:-1], start, end), via_x, rtol=1e-12, atol=1e-9)
    # the DDIM start sqrt(1 + sigma^2) eps has the closed-form signal, also at zero terminal SNR in float32
    start_x = (1 + sigma.reshape(-1, 1, 1, 1) ** 2).sqrt() * eps
    assert torch.allclose(noise_signal(eps, sigma), signal_of(start_x, eps, sigma), rtol=1e-9, atol=1e-9)
    tiny = noise_signal(eps.float(), torch.full((6,), 4096.0))
    assert torch.allclose(tiny.double(), eps / (2 * 4096.0), rtol=1e-6)


# --- the loss's fixed point --------------------------------------------------------------------------


def boot_recipe(steps: int, weighting: str = "boot") -> BOOTRecipe:
    return BOOTRecipe(standin_model(), BOOTConfig(guidance_scale=1.0, bootstrap_steps=steps, weighting=weighting))


def test_the_teachers_own_ddim_chain_is_an_exact_fixed_point():
    """A student that returns the teacher's DDIM signal chain on the recipe's grid (from the closed-form start)
    makes every bootstrap term, the boundary one included, exactly zero."""
    mixture = gaussian()
    recipe = boot_recipe(10)
    recipe.teacher = teacher = GaussianMixtureDenoiser(mixture)
    grid = recipe.sigmas

    def chain(x, sigma, cond=None):
        eps = eps_of(x, sigma).double()
        k = (grid[None] - sigma.double()[:, None]).abs().argmin(dim=1)
        y = noise_signal(eps, grid[0])
        out = torch.empty_like(y)
        for step in range(1, len(grid)):
            y = signal_ddim_step(teacher, y, eps, grid[step - 1], grid[step])
            out[k == step] = y[k == step]
        return out.to(x.dtype)

    recipe.student = chain
    loss = recipe.loss(prompts_only_batch(64), "student", 0, torch.Generator().manual_seed(1))
    assert 0 < loss.terms["boundary_share"] < 1  # the draw covered the boundary step and the others
    assert loss.total < 1e-9


def test_the_exact_signal_trajectory_is_the_fixed_point_of_the_bootstrap_loss():
    """The signal of the teacher's exact ODE trajectory (closed form for a Gaussian) leaves only the DDIM step's
    discretisation error: it shrinks as the grid refines (about 4x per halving of the step, the first-order
    step's h^2), while a student 1% off the trajectory keeps a loss that does not vanish."""
    mixture = gaussian()
    losses, wrong = {}, {}
    for steps in (25, 50, 100):
        recipe = boot_recipe(steps)
        recipe.teacher = GaussianMixtureDenoiser(mixture)
        batch = prompts_only_batch(256)
        for scale, out in ((1.0, losses), (1.01, wrong)):
            recipe.student = OnTrajectory(mixture, float(recipe.sigmas[0]), scale)
            out[steps] = recipe.loss(batch, "student", 0, torch.Generator().manual_seed(2)).total.item()
    assert losses[25] / losses[50] > 3 and losses[50] / losses[100] > 3  # measured 4.4 and 4.1
    assert losses[100] < 2e-5 and wrong[100] > 5 * losses[100]  # measured 9e-6 and 10x


def test_the_boundary_step_is_the_teachers_prediction_from_pure_noise_at_zero_terminal_snr():
    """The paper's boundary condition g(eps, T) = f(eps, T): the k = 0 target, one guided teacher step from the
    closed-form start, is the teacher's x0 from pure noise up to sigma_1 / sigma_0 (2.6% with 50 steps)."""
    recipe = boot_recipe(50)
    recipe.teacher = teacher = GaussianMixtureDenoiser(gaussian())
    eps = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s0, s1 = recipe.sigmas[0], recipe.sigmas[1]
    assert 4095 < s0 < 4097 and recipe.timesteps[1] == 979 and s1 / s0 < 0.03
    target = signal_ddim_step(teacher, noise_signal(eps, s0), eps, s0, s1)
    f = teacher((1 + s0**2).sqrt() * eps, s0)
    assert (target - f).abs().max() <= 0.03 * f.abs().max()


# --- the data path and the trainer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd():
    from gendistill.backends.text_to_image import TextToImageModel

    return TextToImageModel(tiny_sd_pipeline(seed=0))


def no_images(monkeypatch, model):
    """Make every route to an image fail: the shapes renderer and the VAE encoder."""
    from gendistill.domains.shapes import dataset

    def refuse(*args, **kwargs):
        raise AssertionError("BOOT's data path touched an image")

    monkeypatch.setattr(dataset, "render_batch", refuse)
    monkeypatch.setattr(model, "encode_images", refuse)


def test_the_presets_data_source_yields_prompts_only(tiny_sd, monkeypatch):
    from gendistill.domains.shapes import make_batch
    from gendistill.jobs.distill.run import make_batches

    expected = make_batch(4, torch.Generator().manual_seed(5)).captions  # before the renderer is refused
    no_images(monkeypatch, tiny_sd)
    config = load_config(DistillConfig, PRESETS / "shapes-boot.yaml", ["data.batch_size=4"])
    assert config.recipe.KIND == "boot" and config.data.with_latents is False
    batch = make_batches(config, tiny_sd)(0, torch.Generator().manual_seed(5))
    assert batch.latents is None and batch.prompts == expected and batch.cond.batch_size == 4
    sd15 = load_config(DistillConfig, PRESETS / "sd15-boot.yaml")
    assert sd15.data.source == "prompts" and sd15.data.with_latents is False


def test_two_trainer_steps_on_a_tiny_sd_pipeline_see_prompts_only(tiny_sd, monkeypatch, tmp_path):
    from gendistill.jobs.distill.run import make_batches

    no_images(monkeypatch, tiny_sd)
    config = load_config(DistillConfig, PRESETS / "shapes-boot.yaml", ["data.batch_size=2", "recipe.bootstrap_steps=4"])
    bound = config.recipe.build(tiny_sd)
    recipe, seen = bound.recipe, []
    loss = recipe.loss
    recipe.loss = lambda batch, *a: seen.append(batch.latents) or loss(batch, *a)
    teacher = {k: v.clone() for k, v in recipe.models.teacher_unet.state_dict().items()}
    before = {k: v.clone() for k, v in recipe.models.student_unet.state_dict().items()}
    trainer = TrainerConfig(steps=2, log_every=1, checkpoint_every=0, optimizers={"student": OptimizerConfig(lr=1e-3)})
    history = Trainer(recipe, trainer, tmp_path, make_batches(config, tiny_sd), progress=False).fit().history
    assert seen == [None, None]
    losses = [r["student/loss"] for r in history if "student/loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = recipe.models.student_unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(teacher[k], v) for k, v in recipe.models.teacher_unet.state_dict().items())
    assert (bound.max_steps, bound.default_steps, bound.guidance) == (1, 1, 0.0)


def test_a_batch_with_latents_is_refused():
    recipe = boot_recipe(4)
    batch = prompts_only_batch(2)
    batch.latents = torch.zeros(2, *SHAPE)
    with pytest.raises(UserError, match="boot is data-free.*with_latents: false"):
        recipe.loss(batch, "student", 0, torch.Generator())


# --- the student's parametrisation ---------------------------------------------------------------------


def test_a_signal_student_of_a_zero_snr_v_teacher_starts_on_the_boundary_condition():
    """student_prediction sample, v teacher: the copy with its output layer negated returns, from pure noise at
    the top of the grid, the teacher's x0 (g(eps, T) = f(eps, T)) up to alpha_T = 2^-12 (measured 8e-4), as the
    unchanged copy read as v does trivially."""
    from gendistill.backends.text_to_image import TextToImageModel

    model = TextToImageModel(tiny_sd_pipeline(seed=2, scheduler=ZERO_SNR, prediction_type="v_prediction"))
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    cond, _ = model.encode_batch(["a red cube", "a blue sphere"])
    with torch.no_grad():
        for prediction, reading in (("sample", "sample"), ("teacher", "v_prediction")):
            recipe = BOOTConfig(bootstrap_steps=10, student_prediction=prediction).build(model).recipe
            top = recipe.sigmas[:1].expand(2).float()
            teacher = recipe.teacher((1 + top.reshape(-1, 1, 1, 1) ** 2).sqrt() * eps, top, cond)
            student = student_signal(recipe.student, eps, top, cond)
            assert recipe.student_prediction_type == reading
            assert torch.allclose(student, teacher, atol=2e-3) and teacher.abs().max() > 0.5


# --- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, scheduler", [("epsilon", {}), ("v_prediction", ZERO_SNR)],
                         ids=["sd-epsilon", "zero-snr-v"])
def test_stock_diffusers_one_step_sample_equals_the_recipes(prediction, scheduler, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.distill.export import export_student

    model = TextToImageModel(tiny_sd_pipeline(seed=1, scheduler=scheduler, prediction_type=prediction))
    bound = BOOTConfig(bootstrap_steps=10).build(model)
    with torch.no_grad():  # a student that is not the teacher
        for p in bound.student_unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    folder = export_student(model.pipe, bound.export_unet(), bound.sampling, tmp_path / "pipe", bound.pipeline_builder)
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert type(pipe.scheduler) is DDIMScheduler
    pipe.scheduler.set_timesteps(1)
    assert pipe.scheduler.timesteps.tolist() == [0]
    prompts = ["a red cube", "a blue sphere"]
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    stock = pipe(prompts, num_inference_steps=1, guidance_scale=0.0, latents=eps.clone(), output_type="latent").images
    cond, _ = model.encode_batch(prompts)
    own = bound.recipe.sample(eps, cond)
    assert torch.allclose(stock, own, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(own, eps, atol=1e-2)  # a real output, not the input passed through
    student = TextToImageModel(pipe)  # gendistill's own DDIM on the exported folder: the same single step
    plan = student.plan("ddim", 1)
    assert plan.sigmas.tolist() == [float(bound.recipe.sigmas[-1]), 0.0] and plan.noise_scaling == "vp"
    start = initial_scale(float(plan.sigmas[0]), plan.noise_scaling) * eps
    assert torch.allclose(final_sample(sample_euler(student.denoiser(), start, plan.sigmas, cond)), own, atol=1e-5)


# --- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, message", [
    ({"bootstrap_steps": 0}, "recipe.bootstrap_steps must be >= 1, got 0"),
    ({"weighting": "snr"}, "recipe.weighting must be one of 'boot', 'uniform', got 'snr'"),
    ({"guidance_scale": -1}, "recipe.guidance_scale must be >= 0, got -1"),
    ({"bootstrap_step": 3}, "unknown config key 'recipe.bootstrap_step'"),
    ({"student_prediction": "epsilon"}, "recipe.student_prediction must be one of 'sample', 'teacher', got 'epsilon'"),
])
def test_bad_config_is_a_user_error_naming_the_key(recipe, message):
    with pytest.raises(UserError) as err:
        from_dict(DistillConfig, {"recipe": {"kind": "boot", **recipe}})
    assert str(err.value).startswith(message)


def test_a_grid_finer_than_the_teachers_timesteps_is_refused_naming_the_key():
    with pytest.raises(UserError, match=r"recipe.bootstrap_steps must be in \[1, 999\], got 1000"):
        boot_recipe(1000)

