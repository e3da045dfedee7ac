"""A multi-CFG run on tiny components exports a folder that stock diffusers loads (trust_remote_code) and samples
with ONE UNet call per step, giving the latents of gendistill's own sampler on the same student."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from gendistill.backends.generation import GenerationRequest, generate
from gendistill.backends.loading import load_pipeline, ships_our_pipeline
from gendistill.backends.multi_cfg_pipeline import NEGATIVE_TOKEN
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import load_config
from gendistill.jobs.distill.config import DistillConfig
from gendistill.jobs.distill.run import run_distill
from tiny_pipelines import tiny_sd_pipeline

PRESET = Path(__file__).parents[2] / "configs" / "distill" / "sd15-multi-cfg.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("multi_cfg")
    tiny_sd_pipeline(root / "teacher", seed=0)
    (root / "images").mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 30), colour).save(root / "images" / f"{i}.png")
        (root / "images" / f"{i}.txt").write_text(f"a {colour} square")
    overrides = [f"teacher={root / 'teacher'}", f"data.image_folder={root / 'images'}", "data.batch_size=2",
                 "trainer.steps=2", "trainer.mixed_precision=no", "trainer.checkpoint_every=1",
                 "trainer.optimizers.student.lr=1e-3", "trainer.optimizers.student.warmup_steps=0"]
    result = run_distill(load_config(DistillConfig, PRESET, overrides), root / "run", progress=False)
    return result.pipeline


def unet_calls(pipe) -> list:
    calls: list = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls


def test_export_is_stock_components_plus_our_pipeline_file(exported):
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "MultiCFGPipeline"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["tokenizer"][1] == "CLIPTokenizer"
    assert index["negative_token"] == NEGATIVE_TOKEN and ships_our_pipeline(str(exported))
    pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    assert type(pipe).__name__ == "MultiCFGPipeline"
    assert NEGATIVE_TOKEN in pipe.tokenizer.get_vocab()
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == len(pipe.tokenizer)
    assert pipe.unet.config.time_cond_proj_dim == 512 and pipe.unet.time_embedding.cond_proj.weight.any()
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not pipe.scheduler.config.set_alpha_to_one


def test_stock_diffusers_samples_one_unet_call_per_step_as_gendistill_does(exported):
    pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    calls = unet_calls(pipe)
    kwargs = dict(negative_prompt="a blue sphere", guidance_scale=3.0, num_inference_steps=4, output_type="latent")
    stock = pipe("a red cube", negative_guidance_scale=1.0, generator=torch.Generator().manual_seed(7),
                 **kwargs).images
    assert calls == [1, 1, 1, 1]  # one pass per step, no CFG batch
    plain = pipe("a red cube", negative_guidance_scale=0.0, generator=torch.Generator().manual_seed(7),
                 **kwargs).images
    assert (stock - plain).abs().max() > 1e-6  # the negative scale reaches the UNet

    model = TextToImageModel(load_pipeline(str(exported)))
    request = GenerationRequest("a red cube", negative_prompt="a blue sphere", guidance=3.0, negative_guidance=1.0,
                                steps=4, seed=7)
    ours = generate(model, request, progress=False)
    assert ours.nfe == 4
    torch.testing.assert_close(ours.latents, stock, atol=1e-4, rtol=0)


def test_student_card_and_model_card_name_the_recipe(exported):
    card = (exported / "README.md").read_text()
    assert "multi_cfg" in card and "trust_remote_code=True" in card and "negative_guidance_scale" in card
    assert json.loads((exported / "gendistill.json").read_text())["guidance"] == 7.5
