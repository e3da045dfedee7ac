"""Attention Distillation's losses and guidance on a tiny SD-shaped UNet: zeros where they must be, the target
through ``AttentionAccess``'s key/value edit equals the formula, the gradient reaches the latent, and the
sampler guidance is the plain sampler at zero strength."""

import pytest
import torch

from gendistill.backends.attention import AttentionAccess
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.samplers import final_sample, sample_euler
from gendistill.score.attention_distillation import (ADLossConfig, AttentionDistillationConfig, StyleLoss,
                                                     ad_loss, attention_output, content_loss, unet_forward)
from gendistill.score.attention_guide import AttentionGuide, SamplerGuidanceConfig, adain
from tiny_pipelines import tiny_sd_pipeline


@pytest.fixture(scope="module")
def model():
    return TextToImageModel(tiny_sd_pipeline())


@pytest.fixture
def latents(model):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(model.latent_shape(1), generator=g) for _ in range(3)]  # optimised, reference, content


def test_the_chosen_layers_are_the_decoders_last_self_attentions(model):
    style = StyleLoss(model, ADLossConfig(layers=1))
    assert style.layers == ["up_blocks.1.attentions.1.transformer_blocks.0.attn1"]
    assert len(StyleLoss(model, ADLossConfig(layers=6)).layers) == 2  # all there are


def test_ad_loss_is_zero_at_the_reference_positive_elsewhere_and_reaches_the_latent(model, latents):
    z, ref, _ = latents
    style = StyleLoss(model, ADLossConfig(layers=2))
    reference, _ = style.references(ref, None, 500.0)
    at_ref, _ = style.loss(ref.clone(), 500.0, reference, None)
    assert at_ref.item() == pytest.approx(0.0, abs=1e-6)
    z = z.clone().requires_grad_(True)
    loss, terms = style.loss(z, 500.0, reference, None)
    assert loss.item() > 1e-3 and terms["ad"] == pytest.approx(loss.item())
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_content_loss_is_zero_at_the_content_latent(model, latents):
    z, ref, content = latents
    style = StyleLoss(model, ADLossConfig(layers=2))
    reference, content_feats = style.references(ref, content, 300.0)
    own = style.features(content.clone(), 300.0)
    assert content_loss(own, content_feats).item() == pytest.approx(0.0, abs=1e-6)
    assert content_loss(style.features(z, 300.0), content_feats).item() > 1e-3
    # the batched reference/content pass gives the features each image has alone
    alone = style.features(ref, 300.0)
    for name in alone:
        assert torch.allclose(alone[name].key, reference[name].key, atol=1e-5)


def test_the_target_through_a_key_value_edit_equals_the_formula(model, latents):
    z, ref, _ = latents
    style = StyleLoss(model, ADLossConfig(layers=2))
    reference = style.features(ref, 700.0)
    swap = lambda name, key, value: (reference[name].key, reference[name].value)  # noqa: E731
    with AttentionAccess(model.network, kinds=("self",), record=("query", "output"), edit=swap,
                         layers=style.layers) as access:
        unet_forward(model.network, z, 700.0, style.teacher.unconditional(1))
    modules = dict(model.network.named_modules())
    for name in style.layers:
        rec = access.records[name]
        scores = (rec.query @ reference[name].key.transpose(-1, -2)) / rec.query.shape[-1] ** 0.5
        by_hand = scores.softmax(-1) @ reference[name].value
        assert torch.allclose(attention_output(rec.query, reference[name].key, reference[name].value), by_hand,
                              atol=1e-5)
        to_out = modules[name].to_out
        projected = to_out[1](to_out[0](by_hand.transpose(1, 2).flatten(2)))
        assert torch.allclose(rec.output, projected, atol=1e-5)


def test_ad_loss_is_the_formula(model, latents):
    z, ref, _ = latents
    style = StyleLoss(model, ADLossConfig(layers=2))
    own, reference = style.features(z, 100.0), style.features(ref, 100.0)
    expected = sum((attention_output(o.query, o.key, o.value)
                    - attention_output(o.query, reference[n].key, reference[n].value)).abs().mean()
                   for n, o in own.items())
    assert ad_loss(own, reference).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_guidance_logs_the_true_loss_and_sends_its_gradient(model, latents):
    z, ref, content = latents
    config = AttentionDistillationConfig(loss=ADLossConfig(layers=2, content_weight=0.25))
    guidance = config.build(model, ref, content)
    assert guidance.timestep(0, 4) > guidance.timestep(3, 4)  # the DDIM grid, high to low
    leaf = z.clone().requires_grad_(True)
    out = guidance.gradient(leaf, ["a red cube"], 1, 4, torch.Generator().manual_seed(0))
    t = guidance.timestep(1, 4)
    r, c = guidance.style.references(ref, content, t)
    expected, terms = guidance.style.loss(z.clone().requires_grad_(True), t, r, c)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["ad"] == pytest.approx(out.terms["ad"], rel=1e-5) and "content" in out.terms
    out.loss.backward()
    assert torch.allclose(leaf.grad, out.grad, atol=1e-6) and out.grad.abs().sum() > 0
    assert guidance.extra_phases() == [] and guidance.trace[-1]["step"] == 1


def test_zero_strength_guidance_is_the_plain_sampler(model, latents):
    _, ref, _ = latents
    cond, uncond = model.encode("a red cube", None, 1)
    denoiser = CFGDenoiser(model.denoiser(), uncond, 3.0)
    plan = model.plan("ddim", 4)
    x = torch.randn(model.latent_shape(1), generator=torch.Generator().manual_seed(2)) * float(plan.sigmas[0])
    guide = AttentionGuide(model, ADLossConfig(layers=2), SamplerGuidanceConfig(lr=0.0), ref,
                           torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = final_sample(sample_euler(denoiser, x, plan.sigmas, cond))
        guided = final_sample(sample_euler(denoiser, x, plan.sigmas, cond, guide=guide))
        strong = AttentionGuide(model, ADLossConfig(layers=2), SamplerGuidanceConfig(lr=0.05), ref,
                                torch.Generator().manual_seed(0))
        moved = final_sample(sample_euler(denoiser, x, plan.sigmas, cond, guide=strong))
    assert torch.equal(plain, guided)
    assert not torch.allclose(plain, moved)
    assert len(strong.trace) == sum(float(s) > 0 for s in plan.sigmas[1:])  # every step but one to sigma 0


def test_guide_steps_lower_the_ad_loss(model, latents):
    z, ref, _ = latents
    sigma = 2.0
    x = z * (1 + sigma**2) ** 0.5
    guide = AttentionGuide(model, ADLossConfig(layers=2), SamplerGuidanceConfig(lr=0.02, steps=3), ref,
                           torch.Generator().manual_seed(0))
    moved = guide(0, x, sigma)
    before = guide.trace[-1]["ad"]
    again = AttentionGuide(model, ADLossConfig(layers=2), SamplerGuidanceConfig(lr=0.02, steps=1), ref,
                           torch.Generator().manual_seed(0))  # same noise: same noised reference
    again(0, moved, sigma)
    assert again.trace[-1]["ad"] < before


def test_adain_matches_channel_statistics():
    g = torch.Generator().manual_seed(0)
    z, style = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g) * 3 + 1
    out = adain(z, style)
    assert torch.allclose(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-4)
    assert torch.allclose(out.std(dim=(2, 3)), style.std(dim=(2, 3)), atol=1e-3)
