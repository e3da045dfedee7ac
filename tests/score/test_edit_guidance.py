"""The editing guidance (SDS, DDS, LUSD) on tiny components: closed forms and LUSD's filter and normalisation."""

import pytest
import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import UserError
from gendistill.score.edit import EditMaskConfig, EditScoreConfig
from tiny_pipelines import tiny_sd_pipeline

PLAIN = dict(filter_threshold=0.0, normalise=False, reg_scale=0.0, mask=EditMaskConfig(enabled=False))
TINY_MASK = EditMaskConfig()  # SD 1.5's resolutions: the tiny UNet answers with its nearest


@pytest.fixture(scope="module")
def model():
    return TextToImageModel(tiny_sd_pipeline())


def _grad(guidance, z, prompt, step=0, total=10, seed=0):
    return guidance.gradient(z, [prompt], step, total, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("base", ["dds", "difference"])
def test_editing_toward_the_source_prompt_from_the_source_gives_zero(model, base):
    z = torch.randn(model.latent_shape(1), generator=torch.Generator().manual_seed(1))
    guidance = EditScoreConfig(base=base, **PLAIN).build(model, z, "a red cube")
    assert torch.allclose(_grad(guidance, z, "a red cube").grad, torch.zeros_like(z), atol=1e-5)
    assert _grad(guidance, z, "a blue sphere").grad.abs().max() > 1e-4


def test_sds_term_is_the_guided_noise_prediction_minus_the_noise(model):
    z = torch.randn(model.latent_shape(1), generator=torch.Generator().manual_seed(1))
    guidance = EditScoreConfig(base="sds", guidance_scale=1.0, **PLAIN).build(model, z, "")
    out = _grad(guidance, z, "a blue cube")
    gen = torch.Generator().manual_seed(0)
    noised = guidance.teacher.noised(z, guidance.config.timesteps, 0, 10, gen)
    x0 = guidance.teacher.denoiser()(noised.x, noised.sigma, guidance.teacher.conditions(["a blue cube"]))
    eps = (noised.x - x0) / noised.sigma
    assert torch.allclose(out.grad, eps - noised.noise, atol=1e-5)


def test_normalisation_sets_the_scheduled_size_and_the_filter_redraws(model):
    z = torch.randn(model.latent_shape(1), generator=torch.Generator().manual_seed(1))
    config = EditScoreConfig(base="dds", mask=EditMaskConfig(enabled=False), filter_threshold=1e6, max_draws=4)
    out = _grad(config.build(model, z * 0.9, "a red cube"), z, "a blue cube", step=3)
    assert out.terms["draws"] == 4
    from gendistill.score.edit_mask import direction_scale
    assert out.grad.std().item() == pytest.approx(direction_scale(3, 10, 0.15, 0.01, 5.0), rel=1e-4)
    config.filter_threshold = 0.0
    assert _grad(config.build(model, z * 0.9, "a red cube"), z, "a blue cube").terms["draws"] == 1


def test_mask_is_in_unit_range_checkpointed_and_names_bad_words(model):
    z = torch.randn(model.latent_shape(1), generator=torch.Generator().manual_seed(1))
    guidance = EditScoreConfig(base="dds", mask=TINY_MASK).build(model, z * 0.9, "a red cube")
    out = _grad(guidance, z, "a blue cube", step=9)
    mask = guidance.current_mask()
    assert mask.shape == z.shape[-2:] and mask.min() == 0 and mask.max() == 1
    assert out.terms["mask_mean"] == pytest.approx(mask.mean().item(), rel=1e-5)  # last step: the mask itself
    assert set(guidance.modules()["mask"].state_dict()) == {"mask", "seen"}
    bad = EditScoreConfig(mask=EditMaskConfig(word="torus")).build(
        model, z, "a red cube")
    with pytest.raises(UserError, match="torus"):
        _grad(bad, z, "a blue cube")
