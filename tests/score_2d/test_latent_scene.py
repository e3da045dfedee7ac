"""The latent scene on the generic 2D job: the guidance reads latents as they are, the trainer moves them."""

import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.jobs.score_2d.run import Run2DConfig, run_scene_2d, scene_history
from gendistill.render.scenes.latents import LatentSceneConfig
from gendistill.score.sds import SDSConfig
from gendistill.score.teacher import Teacher
from tiny_pipelines import tiny_sd_pipeline


def test_teacher_passes_latents_through_and_encodes_images():
    model = TextToImageModel(tiny_sd_pipeline())
    teacher = Teacher(model)
    latents = torch.randn(model.latent_shape(2))
    assert torch.equal(teacher.encode(latents), latents)
    images = torch.rand(2, 3, *model.image_size())
    assert teacher.encode(images).shape == latents.shape
    assert not teacher.is_latents(images)


def test_sds_moves_latents_on_the_trainer(tmp_path):
    model = TextToImageModel(tiny_sd_pipeline())
    start = torch.randn(model.latent_shape(1), generator=torch.Generator().manual_seed(0))
    scene = LatentSceneConfig(lr=0.1).build(start, model.decode)
    guidance = SDSConfig(guidance_scale=3.0).build(model)
    seen = []
    result = run_scene_2d(scene, guidance, "a red cube", model.image_size(), Run2DConfig(iterations=3,
                          preview_every=1), 0, tmp_path, lambda r: r, torch.device("cpu"), progress=False,
                          on_step=lambda step, img, loss: seen.append((step, img.shape)))
    assert result.step == 3 and len(scene_history(result)) == 3
    assert not torch.allclose(scene.latents.detach(), start)
    assert seen and seen[0][1] == (3, *model.image_size())
    assert scene.image().shape == (3, *model.image_size())
    assert (tmp_path / "checkpoints").is_dir()
