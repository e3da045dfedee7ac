"""Score distillation guidance on tiny pipelines: SDS, CSD and NPG against closed forms computed by hand from
the UNet, VSD's zero gradient when fake == real, the surrogate loss reaching the pixels through the VAE, the
timestep policies and ramps, an SDS-optimised image approaching the teacher's mode, and distilled students
(LCM boundary condition, w-embedding) as the teacher."""

import copy

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import from_dict, to_dict
from gendistill.diffusion.adapters import LCMBoundaryDenoiser
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.errors import UserError
from gendistill.config import check_config
from gendistill.diffusion.ramps import LinearRamp
from gendistill.diffusion.timesteps import AnnealedMax, Decreasing, TimestepRange
from gendistill.score.csd import CSD, CSDConfig
from gendistill.score.guidance import guidance_from_model
from gendistill.score.image import ImageParams
from gendistill.score.npg import NegativePromptGuidance, NPGConfig
from gendistill.score.sds import SDS, SDSConfig
from gendistill.score.teacher import encode_with_grad
from gendistill.score.vsd import VSD, VSDConfig
from tiny_pipelines import tiny_sd3_pipeline, tiny_sd_pipeline, tiny_unet

PROMPTS = ["a red cube", "a blue ball"]
NEGATIVE = "a green cone"


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


def variant(pipe, **components) -> TextToImageModel:
    """A pipeline sharing ``pipe``'s modules, with some replaced (scheduler, unet)."""
    parts = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet",
                                                                "scheduler")}
    new = StableDiffusionPipeline(**{**parts, **components}, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    return TextToImageModel(new)


@pytest.fixture(scope="module")
def model(pipe):
    return TextToImageModel(pipe)


def images(n=2, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class ByHand:
    """The same draws as the guidance (timesteps, then noise), and the UNet's epsilon for any prompts."""

    def __init__(self, pipe, images, seed, t_min, t_max):
        g = torch.Generator().manual_seed(seed)
        self.pipe = pipe
        self.t = torch.randint(round(t_min * 1000), round(t_max * 1000) + 1, (images.shape[0],), generator=g)
        vae = pipe.vae
        with torch.no_grad():
            z0 = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        self.noise = torch.randn(z0.shape, generator=g)
        self.abar = DDIMScheduler.from_config(pipe.scheduler.config).alphas_cumprod[self.t].view(-1, 1, 1, 1)
        self.zt = self.abar.sqrt() * z0 + (1 - self.abar).sqrt() * self.noise

    @torch.no_grad()
    def eps(self, prompts):
        tok = self.pipe.tokenizer(prompts, padding="max_length", max_length=self.pipe.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
        embeds = self.pipe.text_encoder(tok.input_ids)[0]
        return self.pipe.unet(self.zt, self.t, encoder_hidden_states=embeds).sample


def assert_close(actual, expected, rel=1e-4):
    assert (actual - expected).abs().max().item() <= rel * expected.abs().max().item() + 1e-7


# --- closed forms ---------------------------------------------------------------------------------


def test_sds_gradient_is_w_times_guided_eps_minus_noise(pipe, model):
    """grad = (1 - abar_t) (eps_u + s (eps_c - eps_u) - eps), by hand from the UNet with the same draws."""
    x = images()
    config = SDSConfig(guidance_scale=5.0, timesteps=TimestepRange(0.1, 0.9))
    out = SDS(model, config).gradient(x, PROMPTS, 3, 10, torch.Generator().manual_seed(7))
    hand = ByHand(pipe, x, 7, 0.1, 0.9)
    eps_c, eps_u = hand.eps(PROMPTS), hand.eps(["", ""])
    expected = (1 - hand.abar) * (eps_u + 5.0 * (eps_c - eps_u) - hand.noise)
    assert_close(out.grad, expected)
    assert torch.allclose(out.sigma, ((1 - hand.abar) / hand.abar).sqrt().flatten(), rtol=1e-6)
    for weighting, factor in (("uniform", 1 / (1 - hand.abar)), ("snr", ((1 - hand.abar) / hand.abar).sqrt()
                                                                 / (1 - hand.abar))):
        other = SDS(model, SDSConfig(guidance_scale=5.0, weighting=weighting, timesteps=TimestepRange(0.1, 0.9)))
        assert_close(other.gradient(x, PROMPTS, 3, 10, torch.Generator().manual_seed(7)).grad, factor * expected)


def test_csd_gradient_is_the_classifier_scores_alone(pipe, model):
    """grad = (1 - abar) [w_pos (eps_c - eps_u) - w_neg (eps_n - eps_u)]; zero when the prompt is the empty one."""
    x = images()
    config = CSDConfig(guidance_weight=2.0, negative_prompt=NEGATIVE, negative_weight=LinearRamp(1.0, 0.0, 0, 10),
                       timesteps=TimestepRange(0.2, 0.8))
    out = CSD(model, config).gradient(x, PROMPTS, 5, 10, torch.Generator().manual_seed(3))
    hand = ByHand(pipe, x, 3, 0.2, 0.8)
    eps_c, eps_u, eps_n = hand.eps(PROMPTS), hand.eps(["", ""]), hand.eps([NEGATIVE] * 2)
    assert_close(out.grad, (1 - hand.abar) * (2.0 * (eps_c - eps_u) - 0.5 * (eps_n - eps_u)))
    assert out.terms["negative_weight"] == 0.5
    empty = CSD(model, CSDConfig()).gradient(x, ["", ""], 0, 10, torch.Generator().manual_seed(3))
    assert empty.grad.abs().max().item() <= 1e-6 and out.grad.abs().max().item() > 1e-3


@pytest.mark.parametrize("t_range", [(0.05, 0.15), (0.4, 0.9)])
def test_npg_is_humangaussians_formula(pipe, model, t_range):
    """Released HumanGaussian code: w [s (eps_c - eps_u) + (eps_u - eps_n) if t >= 200 else eps_u]."""
    x = images()
    config = NPGConfig(guidance_scale=7.5, negative_prompt=NEGATIVE, timesteps=TimestepRange(*t_range))
    out = NegativePromptGuidance(model, config).gradient(x, PROMPTS, 0, 10, torch.Generator().manual_seed(5))
    hand = ByHand(pipe, x, 5, *t_range)
    eps_c, eps_u, eps_n = hand.eps(PROMPTS), hand.eps(["", ""]), hand.eps([NEGATIVE] * 2)
    m = (hand.t >= 200).float().view(-1, 1, 1, 1)
    assert out.terms["negative_on"] == m.mean().item()
    expected = (1 - hand.abar) * (7.5 * (eps_c - eps_u) + m * (eps_u - eps_n) + (1 - m) * eps_u)
    assert_close(out.grad, expected)


def test_npg_with_lambda_s_minus_1_is_sds_with_the_negative_prompt_in_place_of_the_empty_one(model):
    """The "sds" domain score with lambda = s - 1 everywhere is diffusers-style negative-prompt CFG in SDS;
    a ramp anneals lambda, and lambda = 0 is plain SDS."""
    x, s = images(), 6.0
    sds_neg = SDS(model, SDSConfig(guidance_scale=s, negative_prompt=NEGATIVE))
    sds = SDS(model, SDSConfig(guidance_scale=s))
    ramp = LinearRamp(s - 1, 0.0, 0, 10)
    npg = NegativePromptGuidance(model, NPGConfig(guidance_scale=s, negative_prompt=NEGATIVE, negative_scale=ramp,
                                                  negative_t_min=0.0, domain_score="sds"))
    for step, reference in ((0, sds_neg), (10, sds)):
        ours = npg.gradient(x, PROMPTS, step, 11, torch.Generator().manual_seed(9))
        assert_close(ours.grad, reference.gradient(x, PROMPTS, step, 11, torch.Generator().manual_seed(9)).grad)
        assert ours.terms["negative_scale"] == ramp.value(step)


# --- the surrogate loss and the way back to the pixels --------------------------------------------


def test_the_loss_has_grad_on_the_latents_and_reaches_the_pixels_through_the_vae(model):
    params = ImageParams(2, 32, 32, generator=torch.Generator().manual_seed(0))  # resized to the model's 16
    out = SDS(model, SDSConfig()).gradient(params.render(), PROMPTS, 0, 1, torch.Generator().manual_seed(1))
    (d_latents,) = torch.autograd.grad(out.loss, out.latents, retain_graph=True)
    assert torch.allclose(d_latents, out.grad / 2, rtol=1e-6, atol=0)
    out.loss.backward()
    grad = params.logits.grad
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad) > grad.numel() // 2
    assert all(p.grad is None for p in model.pipe.vae.parameters())
    assert all(p.grad is None for p in model.network.parameters())


# --- VSD ------------------------------------------------------------------------------------------


def test_vsd_gradient_is_exactly_zero_while_the_fake_score_is_the_teacher_then_it_learns(model):
    """LoRA B = 0 and the camera MLP's last layer = 0: fake == teacher bit for bit (no CFG). A few fake-score
    steps on the renders train only the LoRA and the camera MLP, and make the fake score camera-dependent."""
    x, cams = images(), torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    vsd = VSD(model, VSDConfig(guidance_scale=1.0, lora_rank=4))
    out = vsd.gradient(x, PROMPTS, 0, 10, torch.Generator().manual_seed(2), camera_features=cams)
    assert torch.count_nonzero(out.grad) == 0 and out.loss.item() == 0.0
    guided = VSD(model, VSDConfig(guidance_scale=3.0)).gradient(x, PROMPTS, 0, 10, torch.Generator().manual_seed(2),
                                                                camera_features=cams)
    assert guided.terms["grad_norm"] > 0

    (phase,) = vsd.extra_phases()
    assert phase.name == "fake_score" and set(vsd.modules()) == {"fake_score", "camera_embedding"}
    optimizer = torch.optim.Adam(phase.parameters, lr=1e-2)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        optimizer.zero_grad()
        loss = vsd.phase_loss("fake_score", x, PROMPTS, cams, generator)
        loss.total.backward()
        assert torch.isfinite(loss.total)
        optimizer.step()
    assert all(p.grad is None for p in model.network.parameters())
    assert vsd.camera.net[2].weight.abs().sum() > 0
    trained = vsd.gradient(x, PROMPTS, 0, 10, torch.Generator().manual_seed(2), camera_features=cams)
    assert trained.terms["grad_norm"] > 0
    other_cams = vsd.gradient(x, PROMPTS, 0, 10, torch.Generator().manual_seed(2), camera_features=-cams)
    assert not torch.allclose(trained.grad, other_cams.grad)


# --- timestep policies and ramps ------------------------------------------------------------------


def test_uniform_range_stays_in_range_and_reaches_both_ends():
    g = torch.Generator().manual_seed(0)
    t = TimestepRange(0.02, 0.98).timesteps(0, 1, 20000, g, 1000)
    assert t.min().item() == 20 and t.max().item() == 980
    table = torch.linspace(0.1, 10, 1000, dtype=torch.float64)
    sig = TimestepRange(0.5, 0.5).sample(0, 1, 3, g, table)
    assert torch.equal(sig, table[[500] * 3])


def test_annealed_max_upper_bound_decreases_and_bounds_the_draws():
    policy, g = AnnealedMax(0.02, 0.98, 0.5), torch.Generator().manual_seed(0)
    bounds = [policy.t_max(step, 100) for step in range(100)]
    assert bounds[0] == 0.98 and bounds[-1] == 0.5
    assert all(a > b for a, b in zip(bounds, bounds[1:]))
    for step in (0, 50, 99):
        t = policy.timesteps(step, 100, 2000, g, 1000)
        assert t.min() >= 20 and t.max() <= round(bounds[step] * 1000)
    assert policy.timesteps(0, 100, 2000, g, 1000).max() > 900


def test_decreasing_is_monotone_from_start_to_end_and_its_jitter_stays_in_range():
    g = torch.Generator().manual_seed(0)
    for shape in ("sqrt", "linear"):
        policy = Decreasing(0.98, 0.02, shape)
        t = torch.cat([policy.timesteps(step, 50, 1, g, 1000) for step in range(50)])
        assert t[0] == 980 and t[-1] == 20 and (t[1:] <= t[:-1]).all()
    assert Decreasing(shape="sqrt").fraction(25, 101) < Decreasing(shape="linear").fraction(25, 101)
    jittered = Decreasing(0.6, 0.4, "linear", jitter=0.1).timesteps(0, 10, 500, g, 1000)
    assert jittered.min() >= 500 and jittered.max() <= 600 and len(jittered.unique()) > 10


def test_linear_ramp_endpoints():
    ramp = LinearRamp(4.0, 1.0, 10, 20)
    assert [ramp.value(s) for s in (0, 10, 15, 20, 99)] == [4.0, 4.0, 2.5, 1.0, 1.0]
    assert LinearRamp(2.0, 2.0).value(123) == 2.0


def test_configs_load_from_plain_data_and_bad_values_are_user_errors(model):
    config = from_dict(NPGConfig, {"negative_scale": {"start": 3.0, "end": 0.0, "end_step": 100},
                                   "timesteps": {"kind": "decreasing", "shape": "linear", "jitter": 0.05}})
    assert config.negative_scale == LinearRamp(3.0, 0.0, 0, 100) and config.timesteps.jitter == 0.05
    for resolved in (config, VSDConfig(timesteps=AnnealedMax()), CSDConfig()):
        assert from_dict(type(resolved), to_dict(resolved)) == resolved
    assert from_dict(SDSConfig, {"timesteps": {"t_max": 0.5}}).timesteps == TimestepRange(0.02, 0.5)
    for bad, key in ((TimestepRange(0.9, 0.1), "method.t_max"), (AnnealedMax(0.5, 0.98, 0.2), "method.t_max_end"),
                     (Decreasing(0.1, 0.9), "method.t_end"), (LinearRamp(1.0, 0.0, 10, 5), "method.end_step"),
                     (NPGConfig(negative_prompt=""), "method.negative_prompt"),
                     (SDSConfig(timesteps=TimestepRange(0.5, 1.5)), "method.timesteps.t_max")):
        with pytest.raises(UserError, match=key):
            check_config(bad, "method")
    for bad in (lambda: guidance_from_model(model, "sjc"),
                lambda: guidance_from_model(model, "vsd", SDSConfig()),
                lambda: NPGConfig(negative_prompt="").build(model)):
        with pytest.raises(UserError):
            bad()
    assert isinstance(guidance_from_model(model, "csd"), CSD) and isinstance(CSDConfig().build(model), CSD)


# --- an image optimised by SDS --------------------------------------------------------------------


def test_sds_moves_an_image_to_the_teachers_mode(pipe):
    """A teacher whose data is one latent z* (an x0-prediction UNet whose output layer returns z* for every
    input: the exact denoiser of a point mass), z* the encoding of a target image. Thirty SDS steps on free
    pixels must cut the teacher's own weighted noise-prediction error on fixed (t, eps) draws, which for this
    teacher is the distance to its mode, by more than half."""
    unet = copy.deepcopy(pipe.unet)
    target = torch.zeros(1, 3, 16, 16)
    target[:, 0, 4:12, 4:12] = 1.0
    model = variant(pipe, unet=unet, scheduler=DDIMScheduler.from_config(pipe.scheduler.config,
                                                                         prediction_type="sample"))
    with torch.no_grad():
        z_star = encode_with_grad(model, target)
    unet.conv_out.register_forward_hook(lambda _module, _inputs, out: z_star.expand_as(out).to(out.dtype))
    guidance = SDS(model, SDSConfig(guidance_scale=7.5))
    params = ImageParams(1, 16, 16, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(params.parameters(), lr=0.05)
    eval_g = torch.Generator().manual_seed(11)
    eval_t = torch.randint(20, 981, (8,), generator=eval_g)
    eval_eps = torch.randn(8, 4, 8, 8, generator=eval_g)
    sigma = guidance.teacher.train_sigmas[eval_t].float().view(-1, 1, 1, 1)

    def teacher_error() -> float:
        with torch.no_grad():
            x0 = guidance.teacher.encode(params.render()).expand(8, -1, -1, -1)
            x = x0 + sigma * eval_eps
            d = guidance.teacher.denoiser()(x, sigma.flatten(), guidance.teacher.conditions(["a red cube"] * 8))
            eps_hat = (x - d) / sigma
            return ((sigma**2 / (1 + sigma**2)) * (eps_hat - eval_eps) ** 2).mean().item()

    before, generator = teacher_error(), torch.Generator().manual_seed(1)
    for step in range(30):
        optimizer.zero_grad()
        guidance.gradient(params.render(), ["a red cube"], step, 30, generator).loss.backward()
        optimizer.step()
    assert teacher_error() < 0.3 * before


# --- distilled students and other families as the teacher ----------------------------------------


def test_an_lcm_student_is_a_teacher_and_vsd_mirrors_its_boundary_condition(pipe):
    lcm = variant(pipe, scheduler=LCMScheduler.from_config(pipe.scheduler.config))
    x = images()
    guidance = SDS(lcm, SDSConfig(guidance_scale=1.0, timesteps=TimestepRange(0.1, 0.9)))
    assert isinstance(guidance.teacher.denoiser(), LCMBoundaryDenoiser)
    out = guidance.gradient(x, PROMPTS, 0, 1, torch.Generator().manual_seed(2))
    sigma = out.sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = out.latents + sigma * ByHand(pipe, x, 2, 0.1, 0.9).noise
        d = lcm.denoiser()(x_t, out.sigma, lcm.encode_batch(PROMPTS)[0])
    assert_close(out.grad, sigma**2 / (1 + sigma**2) * (out.latents - d) / sigma)
    vsd = VSD(lcm, VSDConfig(guidance_scale=1.0))
    assert isinstance(vsd.fake.denoiser, LCMBoundaryDenoiser)
    assert torch.count_nonzero(vsd.gradient(x, PROMPTS, 0, 1, torch.Generator().manual_seed(2)).grad) == 0


def test_a_w_embedding_student_gets_its_scale_embedded_instead_of_cfg(pipe):
    torch.manual_seed(3)
    student = variant(pipe, unet=tiny_unet(time_cond_proj_dim=32))
    x = images()
    outs = {s: SDS(student, SDSConfig(guidance_scale=s)).gradient(x, PROMPTS, 0, 1, torch.Generator().manual_seed(4))
            for s in (1.0, 4.0)}
    sigma = outs[4.0].sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = outs[4.0].latents + sigma * ByHand(pipe, x, 4, 0.02, 0.98).noise
        d = student.denoiser(4.0)(x_t, outs[4.0].sigma, student.encode_batch(PROMPTS)[0])
    assert_close(outs[4.0].grad, sigma**2 / (1 + sigma**2) * (outs[4.0].latents - d) / sigma)
    assert not torch.allclose(outs[1.0].grad, outs[4.0].grad)


def test_a_flow_matching_teacher_works_for_sds_and_vsd_says_it_needs_a_unet():
    flow = TextToImageModel(tiny_sd3_pipeline())
    x = images()
    out = SDS(flow, SDSConfig(guidance_scale=3.0)).gradient(x, PROMPTS, 0, 1, torch.Generator().manual_seed(6))
    sigma = out.sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = out.latents + sigma * torch.randn(out.latents.shape, generator=_after_timesteps(6, 2))
        cond, uncond = flow.encode_batch(PROMPTS)
        d = CFGDenoiser(flow.denoiser(), uncond, 3.0)(x_t, out.sigma, cond)
    assert_close(out.grad, sigma**2 / (1 + sigma**2) * (out.latents - d) / sigma, rel=1e-3)
    assert torch.isfinite(out.grad).all() and out.terms["grad_norm"] > 0
    with pytest.raises(UserError, match="UNet"):
        VSD(flow, VSDConfig())


def _after_timesteps(seed: int, n: int) -> torch.Generator:
    """A generator seeded like the guidance's, past its timestep draw (default TimestepRange)."""
    g = torch.Generator().manual_seed(seed)
    torch.randint(20, 981, (n,), generator=g)
    return g
