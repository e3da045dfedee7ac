"""The generic scheduler driver: typed steps, the pipeline's scheduler untouched, exact in float64 (the full
parity matrix through ``generate`` is test_scheduler_parity_matrix.py)."""

from itertools import pairwise

import torch
from diffusers import HeunDiscreteScheduler
from tiny_pipelines import tiny_sd_pipeline

from gendistill.backends.generation import GenerationRequest, guided_denoiser
from gendistill.backends.scheduler_driver import (
    SchedulerStep,
    TimestepUnits,
    final_latents,
    fresh_scheduler,
    sample_with_scheduler,
)
from gendistill.backends.text_to_image import TextToImageModel

PROMPT, STEPS, GUIDANCE, SEED = "a red cube", 6, 5.0, 3


def stock(pipe, scheduler_cls, extra, **call):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **extra)
    return pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent",
                generator=torch.Generator().manual_seed(SEED), **call).images


def driven(pipe, guidance_rescale=0.0):
    model = TextToImageModel(pipe)
    request = GenerationRequest(PROMPT, steps=STEPS, guidance=GUIDANCE, seed=SEED, guidance_rescale=guidance_rescale)
    denoiser, cond, _ = guided_denoiser(model, request, request.guidance)
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(model.latent_shape(1), generator=generator)
    scheduler = fresh_scheduler(pipe.scheduler)
    with torch.inference_mode():
        return list(sample_with_scheduler(scheduler, denoiser, noise, cond, STEPS, TimestepUnits.of(model),
                                          generator=generator))


def test_yields_typed_steps_one_per_timestep_and_keeps_the_pipelines_scheduler():
    pipe = tiny_sd_pipeline(seed=1)
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    steps = driven(pipe)
    assert len(steps) == 2 * STEPS - 1  # Heun: one entry per network evaluation
    assert all(isinstance(s, SchedulerStep) and s.index == i for i, s in enumerate(steps))
    assert [s.sigma for s in steps][-1] == 0.0 and all(a.sigma >= b.sigma for a, b in pairwise(steps))
    assert pipe.scheduler.step_index is None  # the driver ran a fresh copy
    assert torch.equal(final_latents(iter(steps)), steps[-1].latents)


def test_heun_is_exact_in_float64():
    """Run wholly in float64, the driver and the pipeline agree to 1e-10: what is left in float32 is rounding."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pipe = tiny_sd_pipeline(seed=1).to(torch.float64)
        expected = stock(pipe, HeunDiscreteScheduler, {})
        got = driven(pipe)[-1].latents
    finally:
        torch.set_default_dtype(default)
    assert got.dtype == torch.float64 and (got - expected).abs().max().item() <= 1e-10
