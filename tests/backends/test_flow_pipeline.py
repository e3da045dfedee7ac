"""An SD3-shaped flow-matching pipeline runs through the flow adapter and matches the stock pipeline."""

import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.backends.generation import GenerationRequest, generate
from tiny_pipelines import tiny_sd3_pipeline


def test_flow_euler_matches_stock_sd3_pipeline():
    pipe = tiny_sd3_pipeline(seed=0, shift=3.0)
    request = GenerationRequest("a red cube", sampler="euler", steps=6, guidance=4.0, seed=3, num_images=2)
    stock = pipe(request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance,
                 num_images_per_prompt=2, generator=torch.Generator().manual_seed(request.seed),
                 output_type="latent").images
    result = generate(TextToImageModel(pipe), request, progress=False)
    # We start at flow time 1 - 1e-5 instead of exactly 1 (canonical sigma must be finite).
    assert (result.latents - stock).abs().max().item() < 1e-3 * stock.abs().max().item()
    assert result.images.shape == (2, 3, 16, 16) and result.nfe == 12


def test_a_batch_of_prompts_encodes_as_each_prompt_alone():
    """encode_batch encodes each distinct prompt once; each row has exactly the bits of that prompt's own
    encoding (so a resumed run's batches equal an uninterrupted run's)."""
    model = TextToImageModel(tiny_sd3_pipeline(seed=0))
    prompts = ["a red cube", "a blue sphere, side view", "a red cube"]
    cond, uncond = model.encode_batch(prompts)
    for i, prompt in enumerate(prompts):
        alone, empty = model.encode(prompt, None, 1)
        for got, want in ((cond, alone), (uncond, empty)):
            assert torch.equal(got.embeds[i], want.embeds[0]) and torch.equal(got.pooled[i], want.pooled[0])
    assert cond.embeds.shape[0] == uncond.embeds.shape[0] == 3
