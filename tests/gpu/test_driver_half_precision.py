"""On CUDA, a float16 pipeline sampled through ``--sampler auto`` (the scheduler driver) stays within float16
accuracy of the stock float16 pipeline, for DPM-Solver++ 2M Karras and UniPC."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from tiny_pipelines import tiny_sd_pipeline

from gendistill.backends.generation import GenerationRequest, generate
from gendistill.backends.text_to_image import TextToImageModel

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("scheduler,options", [(DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
                                               (UniPCMultistepScheduler, {})], ids=["dpm++2m-karras", "unipc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_auto_in_half_precision_matches_stock(scheduler, options, dtype):
    pipe = tiny_sd_pipeline(seed=1, prediction_type="v_prediction").to("cuda", dtype)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **options)
    expected = pipe("a red cube", num_inference_steps=8, guidance_scale=4.0, output_type="latent",
                    generator=torch.Generator("cuda").manual_seed(0)).images.float()
    request = GenerationRequest("a red cube", steps=8, guidance=4.0, seed=0)
    got = generate(TextToImageModel(pipe), request, progress=False).latents.float()
    assert torch.isfinite(got).all()
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert (got - expected).abs().max().item() <= 64 * eps * expected.abs().max().item()
