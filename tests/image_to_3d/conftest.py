"""Tiny random components for the image-to-3D tests: a small open_clip CLIP and an image/camera teacher
converted from a tiny Stable-Diffusion-shaped UNet (the same conversion as the shipped one)."""

import pytest
import torch

from tiny_pipelines import SD_SCHEDULER, tiny_unet, tiny_vae

from tiny_image3d import TINY_CLIP, build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    from gendistill.backends.open_clip_model import save_clip

    model, tokenizer, cfg = build_tiny_clip()
    return save_clip(model, cfg, tokenizer, tmp_path_factory.mktemp("clip") / "clip", dtype=torch.float32)


def tiny_base(folder):
    """A saved tiny base teacher folder (unet/, vae/, scheduler/) and its loaded parts."""
    from diffusers import DDIMScheduler

    from gendistill.jobs.train_image_teacher import load_base

    torch.manual_seed(0)
    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    DDIMScheduler(**SD_SCHEDULER, prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    return load_base(str(folder))


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_clip):
    from gendistill.domains.shapes.image_teacher import ImageTeacherConfig, image_camera_unet
    from gendistill.jobs.train_image_teacher import export_teacher

    root = tmp_path_factory.mktemp("teacher")
    base = tiny_base(root / "base")
    unet = image_camera_unet(base.unet, TINY_CLIP["embed_dim"], torch.Generator().manual_seed(1))
    with torch.no_grad():  # a camera MLP that is not zero, so the camera matters in every test
        unet.class_embedding.linear_2.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return export_teacher(unet, base, ImageTeacherConfig(clip=str(tiny_clip)), root / "teacher", {"steps": 0})
