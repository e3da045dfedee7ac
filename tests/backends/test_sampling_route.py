"""What ``--sampler auto`` runs when it cannot follow the pipeline's scheduler (a note on stderr, never silent),
``--scheduler`` swaps, Karras sigmas on the named samplers, hybrid sampling on a scheduler, clear errors."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler
from tiny_pipelines import tiny_sd_pipeline

from gendistill.backends import sampling_route
from gendistill.backends.generation import GenerationRequest, generate, resolve_route
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import UserError

REQUEST = GenerationRequest("a red cube", steps=5, guidance=4.0, seed=2)


@pytest.fixture()
def pipe():
    sampling_route._said.clear()
    return tiny_sd_pipeline(seed=1)


def stock(pipe, scheduler, request=REQUEST):
    pipe.scheduler = scheduler
    return pipe(request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance,
                output_type="latent", generator=torch.Generator().manual_seed(request.seed)).images


def test_auto_runs_the_scheduler_itself_and_keeps_it_untouched(pipe):
    route = resolve_route(TextToImageModel(pipe), REQUEST)
    assert type(route.scheduler) is DDIMScheduler and route.scheduler is not pipe.scheduler and route.note is None


def test_a_scheduler_it_cannot_follow_is_said_on_stderr_with_the_sampler_used(pipe, capsys):
    pipe.scheduler = EDMEulerScheduler()
    result = generate(TextToImageModel(pipe), REQUEST, progress=False)
    err = capsys.readouterr().err
    assert "auto cannot follow EDMEulerScheduler" in err and "sampling with euler" in err
    assert result.sampler == "euler" and torch.isfinite(result.latents).all()


def test_karras_on_a_scheduler_without_karras_sigmas_falls_back_aloud(pipe, capsys):
    result = generate(TextToImageModel(pipe), GenerationRequest("a red cube", steps=5, karras=True), progress=False)
    assert "DDIMScheduler has no Karras sigmas" in capsys.readouterr().err
    assert result.sampler == "ddim Karras"


def test_karras_on_a_scheduler_with_them_uses_its_own(pipe):
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    expected = stock(pipe, DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True))
    result = generate(TextToImageModel(pipe), GenerationRequest("a red cube", steps=5, guidance=4.0, seed=2,
                                                                 karras=True), progress=False)
    assert result.sampler == "DPMSolverMultistepScheduler Karras"
    assert (result.latents - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0)])
def test_named_euler_karras_takes_sigma_min_from_the_smallest_spaced_timestep(pipe, spacing, offset):
    """Before: sigma_min was the first training timestep's (0.14 leading with offset, 1.24 trailing)."""
    config = dict(timestep_spacing=spacing, steps_offset=offset)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, **config)
    request = GenerationRequest("a red cube", steps=6, guidance=4.0, seed=2, sampler="euler", karras=True)
    ours = generate(TextToImageModel(pipe), request, progress=False).latents
    expected = stock(pipe, EulerDiscreteScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True), request)
    assert (ours - expected).abs().max().item() <= 1e-4


def test_scheduler_swaps_as_users_do(pipe):
    request = GenerationRequest("a red cube", steps=5, guidance=4.0, seed=2, scheduler="UniPCMultistepScheduler")
    result = generate(TextToImageModel(pipe), request, progress=False)
    from diffusers import UniPCMultistepScheduler

    expected = stock(pipe, UniPCMultistepScheduler.from_config(pipe.scheduler.config))
    assert result.sampler == "UniPCMultistepScheduler" and (result.latents - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kwargs,message", [
    ({"scheduler": "NoSuchScheduler"}, "not a diffusers scheduler class"),
    ({"scheduler": "UniPCMultistepScheduler", "sampler": "euler"}, "needs --sampler auto"),
    ({"scheduler": "EulerDiscreteScheduler", "eta": 0.5}, "eta needs a scheduler whose step takes eta"),
])
def test_clear_errors(pipe, kwargs, message):
    with pytest.raises(UserError, match=message):
        generate(TextToImageModel(pipe), GenerationRequest("a red cube", steps=3, **kwargs), progress=False)


def test_repeated_karras_timesteps_on_zero_terminal_snr_give_a_clear_error():
    pipe = tiny_sd_pipeline(seed=1, prediction_type="v_prediction",
                            scheduler={"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"})
    request = GenerationRequest("a red cube", steps=25, guidance=4.0, karras=True,
                                scheduler="DPMSolverMultistepScheduler")
    with pytest.raises(UserError, match="timesteps repeat"):
        generate(TextToImageModel(pipe), request, progress=False)


def test_hybrid_on_a_scheduler_hands_over_after_the_base_steps(pipe):
    model = TextToImageModel(pipe)
    plain = generate(model, REQUEST, progress=False)
    same_base = generate(model, GenerationRequest("a red cube", steps=5, guidance=4.0, seed=2, base_steps=2,
                                                  base_guidance=4.0), base=model, progress=False)
    assert torch.allclose(plain.latents, same_base.latents, atol=1e-6) and same_base.nfe == plain.nfe
    other = TextToImageModel(tiny_sd_pipeline(seed=7))
    mixed = generate(model, GenerationRequest("a red cube", steps=5, guidance=4.0, seed=2, base_steps=2,
                                              base_guidance=4.0), base=other, progress=False)
    assert (mixed.latents - plain.latents).abs().max().item() > 1e-3  # the base's first predictions count


@pytest.mark.parametrize("options", [{"use_karras_sigmas": True}, {}], ids=["karras", "plain"])
def test_a_bfloat16_pipeline_stays_within_bfloat16_accuracy_of_stock(options):
    """CPU bfloat16 (the gpu-marked tests/gpu/test_driver_half_precision.py covers float16 on CUDA); measured
    0.068 on latents of magnitude 4.06, 4.3 units of 2^-8."""
    pipe = tiny_sd_pipeline(seed=1, prediction_type="v_prediction").to(torch.bfloat16)
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **options)
    request = GenerationRequest("a red cube", steps=8, guidance=4.0, seed=0)
    expected = stock(pipe, scheduler, request).float()
    pipe.scheduler = scheduler
    got = generate(TextToImageModel(pipe), request, progress=False).latents.float()
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() <= 16 * 2.0**-8 * expected.abs().max().item()
