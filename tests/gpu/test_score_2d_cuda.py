"""On CUDA, with float16 and bfloat16 pipelines: the editing guidance (LUSD's mask included) and two steps of
the 2D job on a latent scene give finite float32 gradients and move the latents."""

import pytest
import torch
from tiny_pipelines import tiny_sd_pipeline

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.jobs.score_2d.run import Run2DConfig, run_scene_2d
from gendistill.render.scenes.latents import LatentSceneConfig
from gendistill.score.edit import EditScoreConfig

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_lusd_edit_steps_in_half_precision(dtype, tmp_path):
    model = TextToImageModel(tiny_sd_pipeline(seed=1).to("cuda", dtype))
    source = torch.randn(model.latent_shape(1), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    guidance = EditScoreConfig(base="dds").build(model, source, "a red cube")
    out = guidance.gradient(source * 1.1, ["a blue cube"], 5, 10, torch.Generator("cuda").manual_seed(0))
    assert out.grad.dtype == torch.float32 and torch.isfinite(out.grad).all()
    assert guidance.current_mask().device.type == "cuda"
    scene = LatentSceneConfig(optimizer="sgd", lr=0.5).build(source, model.decode)
    run_scene_2d(scene, guidance, "a blue cube", model.image_size(), Run2DConfig(iterations=2, checkpoint_every=0),
                 0, tmp_path, lambda r: r, torch.device("cuda"), progress=False)
    assert torch.isfinite(scene.latents).all() and not torch.equal(scene.latents.detach(), source)
