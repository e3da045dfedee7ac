"""Attention access: the recording processors compute what diffusers' own do, record what was asked, give the
UNet its processors back, and swap keys and values when told to."""

import pytest
import torch

from gendistill.backends.attention import AttentionAccess, attention_layers
from tiny_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline


def sd_inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.tensor([10, 600][:batch]), torch.randn(batch, 7, 32,
                                                                                                   generator=g)


def sdxl_call(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, e = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 64, generator=g)
    extra = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    return unet(x, torch.tensor([10, 600]), e, added_cond_kwargs=extra).sample


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_recording_everything_changes_no_output_and_restores_the_processors(kind):
    unet = (tiny_sd_pipeline() if kind == "sd" else tiny_sdxl_pipeline()).unet.eval()
    run = (lambda: unet(*sd_inputs()).sample) if kind == "sd" else (lambda: sdxl_call(unet))
    before = dict(unet.attn_processors)
    with torch.no_grad():
        plain = run()
        with AttentionAccess(unet, record=("query", "key", "value", "probs", "output")) as access:
            recorded = run()
    assert torch.allclose(recorded, plain, atol=1e-5)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == {k: type(v) for k, v in before.items()}
    assert set(access.records) == set(attention_layers(unet))
    for name, record in access.records.items():
        assert torch.allclose(record.probs.sum(-1), torch.ones(()), atol=1e-5)
        assert record.probs.shape[-1] == (7 if name.endswith("attn2") else record.query.shape[2])


def test_cross_attention_maps_have_a_column_per_token_and_only_asked_fields():
    unet = tiny_sd_pipeline().unet.eval()
    with torch.no_grad(), AttentionAccess(unet, kinds=("cross",), record=("probs",)) as access:
        unet(*sd_inputs())
    assert access.records and all(n.endswith("attn2") for n in access.records)
    record = next(iter(access.records.values()))
    b, heads, queries, tokens = record.probs.shape
    assert (b, tokens) == (2, 7) and record.query is None and record.output is None


def test_swapping_in_a_reference_images_keys_and_values():
    """Attention Distillation's operation: self-attention with another input's keys and values. With the
    input's own, nothing changes; with a reference's, the output moves."""
    unet = tiny_sd_pipeline().unet.eval()
    x, t, e = sd_inputs(0)
    reference = sd_inputs(1)[0]
    layers = attention_layers(unet, "self")
    with torch.no_grad():
        plain = unet(x, t, e).sample
        kept = {}
        for source, store in ((x, "own"), (reference, "ref")):
            with AttentionAccess(unet, kinds=("self",), record=("key", "value")) as access:
                unet(source, t, e)
            kept[store] = {n: (r.key, r.value) for n, r in access.records.items()}

        def swap(which):
            return lambda name, key, value: kept[which][name]

        with AttentionAccess(unet, kinds=("self",), record=(), edit=swap("own")):
            own = unet(x, t, e).sample
        with AttentionAccess(unet, kinds=("self",), record=(), edit=swap("ref"), layers=layers[:1]):
            swapped = unet(x, t, e).sample
    assert torch.allclose(own, plain, atol=1e-5)
    assert (swapped - plain).abs().max() > 1e-3


def test_unknown_recordable_is_an_error():
    with pytest.raises(ValueError, match="cannot record"):
        AttentionAccess(tiny_sd_pipeline().unet, record=("maps",))


def test_layer_resolutions_and_the_nearest_one():
    from gendistill.backends.attention import layer_downsample, layers_at, nearest_downsample

    unet = tiny_sd_pipeline().unet  # two levels: attention in down_blocks.0 / up_blocks.1 (1) and the mid block (2)
    assert layer_downsample(unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn2") == 1
    assert layer_downsample(unet, "up_blocks.1.attentions.1.transformer_blocks.0.attn1") == 1
    assert layer_downsample(unet, "mid_block.attentions.0.transformer_blocks.0.attn2") == 2
    assert layers_at(unet, "cross", 2) == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert nearest_downsample(unet, "cross", 4) == 2 and nearest_downsample(unet, "self", 1) == 1
