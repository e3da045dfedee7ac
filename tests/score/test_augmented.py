"""Augmented SDS (DiffSketcher's ASDS): plain SDS at zero strength, SDS on the augmented copy otherwise, and its
gradient reaches the strokes' control points through the augmentation, the VAE and the rasterizer."""

import pytest
import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.errors import UserError
from gendistill.render.augment import AugmentConfig, augment
from gendistill.render.cameras import stack_cameras
from gendistill.render.rig import OrbitRig
from gendistill.render.scenes.strokes import StrokeSceneConfig
from gendistill.score.augmented import AugmentedSDSConfig, is_identity
from gendistill.score.sds import SDSConfig
from tiny_pipelines import tiny_sd_pipeline

IDENTITY = AugmentConfig(distortion=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


@pytest.fixture(scope="module")
def model():
    return TextToImageModel(tiny_sd_pipeline())


def _images(seed=0, batch=2):
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_zero_strength_is_plain_sds_with_the_same_draws(model):
    sds = SDSConfig(guidance_scale=5.0)
    assert is_identity(IDENTITY) and not is_identity(AugmentConfig())
    images = _images()
    plain = sds.build(model).gradient(images, ["a red cube"] * 2, 3, 10, torch.Generator().manual_seed(7))
    wrapped = AugmentedSDSConfig(sds=sds, augment=IDENTITY).build(model)
    out = wrapped.gradient(images, ["a red cube"] * 2, 3, 10, torch.Generator().manual_seed(7))
    assert torch.equal(out.grad, plain.grad) and torch.equal(out.sigma, plain.sigma)
    assert out.loss.item() == plain.loss.item() and out.terms == plain.terms


def test_the_augmentation_is_drawn_first_then_sds_on_the_copy(model):
    sds, aug = SDSConfig(guidance_scale=5.0), AugmentConfig(distortion=0.5, crop_scale=(0.7, 0.9))
    images = _images(1)
    generator = torch.Generator().manual_seed(3)
    copy = augment(images, aug, generator)
    expected = sds.build(model).gradient(copy, ["a blue cone"] * 2, 0, 10, generator)
    out = AugmentedSDSConfig(sds=sds, augment=aug).build(model).gradient(images, ["a blue cone"] * 2, 0, 10,
                                                                         torch.Generator().manual_seed(3))
    assert torch.allclose(out.grad, expected.grad) and torch.equal(out.sigma, expected.sigma)
    assert not torch.allclose(copy, images)


def test_a_step_that_does_not_augment_scores_the_render_as_it_is(model):
    sds = SDSConfig(guidance_scale=5.0)
    images = _images(3)
    generator = torch.Generator().manual_seed(5)
    torch.rand((), generator=generator)  # the step's choice (augment or not) is drawn first
    expected = sds.build(model).gradient(images, ["a red cube"] * 2, 0, 10, generator)
    never = AugmentedSDSConfig(sds=sds, probability=0.0).build(model)
    out = never.gradient(images, ["a red cube"] * 2, 0, 10, torch.Generator().manual_seed(5))
    assert torch.equal(out.grad, expected.grad)
    half = AugmentedSDSConfig(sds=sds, probability=0.5).build(model)
    chosen = [half.augmented(images, torch.Generator().manual_seed(s)) for s in range(12)]
    unchanged = sum(torch.equal(c, images) for c in chosen)
    assert 0 < unchanged < 12


def test_copies_each_get_their_own_draws_and_the_image_gets_their_mean(model):
    guidance = AugmentedSDSConfig(sds=SDSConfig(guidance_scale=5.0), copies=3).build(model)
    images = _images(2, batch=1).requires_grad_(True)
    out = guidance.gradient(images, ["a red cube"], 0, 10, torch.Generator().manual_seed(0))
    assert out.grad.shape[0] == 3 and out.latents.shape[0] == 3
    assert not torch.allclose(out.grad[0], out.grad[1])
    out.loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_gradients_reach_the_stroke_points(model):
    scene = StrokeSceneConfig(num_strokes=6, canvas=16, width=2.0).build(torch.Generator().manual_seed(0),
                                                                          torch.device("cpu"))
    cameras = stack_cameras([OrbitRig(width=16, height=16).camera(0.0, 0.0)])
    render = scene.render(cameras, torch.ones(3))
    guidance = AugmentedSDSConfig(sds=SDSConfig(guidance_scale=5.0)).build(model)
    guidance.gradient(render.rgb, ["a red cube"], 0, 10, torch.Generator().manual_seed(1)).loss.backward()
    assert scene.points.grad is not None and torch.isfinite(scene.points.grad).all()
    assert scene.points.grad.abs().sum() > 0 and scene.widths.grad.abs().sum() > 0


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="copies must be >= 1"):
        check_config(AugmentedSDSConfig(copies=0), "method")
    with pytest.raises(UserError, match="probability must be in"):
        check_config(AugmentedSDSConfig(probability=1.5), "method")
