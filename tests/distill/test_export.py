"""Exported students load in stock diffusers and sample exactly as `gendistill generate` does."""

import pytest
import torch
from diffusers import DiffusionPipeline

from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.schedules import DiscreteVPSchedule, LCMSchedule
from gendistill.distill.export import StudentSampling, export_student
from gendistill.backends.generation import GenerationRequest, generate
from tiny_pipelines import tiny_sd_pipeline, tiny_unet


@pytest.mark.parametrize("sampling,steps", [
    (StudentSampling("lcm", original_steps=4, timestep_scaling=1e6), 1),
    (StudentSampling("lcm", original_steps=4, timestep_scaling=1e6), 4),
    (StudentSampling("lcm", original_steps=50, timestep_scaling=10.0), 2),
    (StudentSampling("ddim"), 4),
])
def test_exported_student_matches_generate(tmp_path, sampling, steps):
    teacher = tiny_sd_pipeline(seed=0)
    torch.manual_seed(9)
    folder = export_student(teacher, tiny_unet(), sampling, tmp_path / "pipeline")
    stock = DiffusionPipeline.from_pretrained(folder, safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    expected = stock("a red cube", num_inference_steps=steps, guidance_scale=0.0, num_images_per_prompt=2,
                     generator=torch.Generator().manual_seed(5), output_type="latent").images
    model = TextToImageModel(load_pipeline(str(folder)))
    got = generate(model, GenerationRequest("a red cube", steps=steps, guidance=0.0, seed=5, num_images=2),
                   progress=False).latents
    assert (got - expected).abs().max().item() <= 1e-4
    if sampling.kind == "lcm":
        stock.scheduler.set_timesteps(steps)
        ac = stock.scheduler.alphas_cumprod
        assert stock.scheduler.timesteps.tolist() == LCMSchedule(ac, sampling.original_steps).timesteps(steps).tolist()
    else:
        plan = model.plan("ddim", steps)
        ac = stock.scheduler.alphas_cumprod
        assert torch.allclose(plan.sigmas, DiscreteVPSchedule(ac, "trailing").sigmas(steps)) and plan.sigmas[-1] == 0
