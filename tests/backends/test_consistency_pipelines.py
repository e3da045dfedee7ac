"""Students exported with diffusers' LCMScheduler sample identically through gendistill (sampler "auto")."""

import pytest
import torch
from diffusers import LCMScheduler

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.adapters import guidance_embedding
from gendistill.backends.generation import GenerationRequest, generate
from tiny_pipelines import tiny_sd_pipeline, tiny_unet


def lcm_pipeline(tmp_path, original_steps, w_embedding=False):
    pipe = tiny_sd_pipeline(tmp_path, seed=4)
    if w_embedding:
        torch.manual_seed(5)
        pipe.unet = tiny_unet(time_cond_proj_dim=16)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=original_steps,
                                              timestep_spacing="trailing")
    return pipe


@pytest.mark.parametrize("original_steps,steps", [(4, 1), (4, 2), (4, 4), (50, 3)])
def test_lcm_scheduler_pipeline_matches(tmp_path, original_steps, steps):
    pipe = lcm_pipeline(tmp_path, original_steps)
    stock = pipe("a red cube", num_inference_steps=steps, guidance_scale=0.0, num_images_per_prompt=2,
                 generator=torch.Generator().manual_seed(11), output_type="latent").images
    model = TextToImageModel(pipe)
    assert model.default_sampler() == "consistency"
    ours = generate(model, GenerationRequest("a red cube", steps=steps, guidance=0.0, seed=11, num_images=2),
                    progress=False)
    assert (ours.latents - stock).abs().max().item() <= 1e-4
    assert ours.nfe == steps


def test_guidance_embedding_unet_matches_without_cfg_batch(tmp_path):
    pipe = lcm_pipeline(tmp_path, 50, w_embedding=True)
    stock = pipe("a blue cone", num_inference_steps=4, guidance_scale=6.0, generator=torch.Generator().manual_seed(2),
                 output_type="latent").images
    ours = generate(TextToImageModel(pipe), GenerationRequest("a blue cone", steps=4, guidance=6.0, seed=2),
                    progress=False)
    assert (ours.latents - stock).abs().max().item() <= 1e-4
    assert ours.nfe == 4  # the scale is embedded: one network call per step


def test_guidance_embedding_equals_diffusers(tmp_path):
    pipe = tiny_sd_pipeline(tmp_path)
    w = torch.tensor([1.0, 4.5, 8.0])
    assert torch.allclose(guidance_embedding(w, 16), pipe.get_guidance_scale_embedding(w - 1, 16), atol=1e-5)
