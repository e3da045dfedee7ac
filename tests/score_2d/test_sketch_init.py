"""DiffSketcher's attention init: the token's cross-attention column becomes the map, the self-attention's first
principal component finds the block that attends to itself, starts are drawn where the map has its mass."""

import pytest
import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.errors import UserError
from gendistill.render.scenes.strokes import StrokeSceneConfig, starts_from_map
from gendistill.score.attention_maps import (AttentionInitConfig, RecordedAttention, attention_maps, fuse_maps,
                                             layer_sides, record_attention, start_probabilities, token_positions)
from tiny_pipelines import tiny_sd_pipeline


def _blob(side=8, rows=slice(1, 4), cols=slice(4, 7)) -> torch.Tensor:
    mask = torch.zeros(side, side)
    mask[rows, cols] = 1
    return mask


def _recorded(mask: torch.Tensor, token: int = 3, tokens: int = 6) -> RecordedAttention:
    """Cross-attention rows where the pixels in ``mask`` attend mostly to ``token``, the rest elsewhere."""
    pixels = mask.numel()
    probs = torch.full((pixels, tokens), 0.1)
    probs[:, token] = 0.05 + 0.6 * mask.flatten()
    probs = probs / probs.sum(1, keepdim=True)
    inside = mask.flatten() > 0
    self_probs = torch.where(inside[:, None] == inside[None, :], 1.0, 0.02)  # the blob attends to itself
    self_probs = self_probs / self_probs.sum(1, keepdim=True)
    return RecordedAttention(probs, self_probs, torch.ones(3, 16, 16))


def test_the_token_column_becomes_a_normalised_map_on_the_blob():
    mask = _blob()
    maps = fuse_maps(_recorded(mask), [3])
    assert maps.cross.shape == (8, 8) and maps.cross.min() == 0 and maps.cross.max() == 1
    assert torch.equal(maps.fused, maps.cross) and maps.self_map is None
    assert (maps.cross[mask > 0] > 0.99).all() and (maps.cross[mask == 0] < 0.01).all()
    other = fuse_maps(_recorded(mask), [1])  # a token nobody attends to more than the rest: the blob is lowest
    assert other.cross[mask > 0].max() < other.cross[mask == 0].min()


def test_the_self_attention_component_finds_the_blob_and_fuses():
    mask = _blob()
    recorded = _recorded(mask)
    maps = fuse_maps(recorded, [3], attn_coeff=0.5)
    assert maps.self_map is not None and maps.self_map.shape == (8, 8)
    assert maps.self_map[mask > 0].min() > maps.self_map[mask == 0].max()  # signed to agree with the cross map
    assert maps.fused.min() == 0 and maps.fused.max() == 1
    assert maps.fused[mask > 0].min() > maps.fused[mask == 0].max()


def test_start_probabilities_put_the_mass_where_the_map_is():
    mask = _blob()
    p = start_probabilities(mask, 32, tau=0.5)
    assert p.shape == (32, 32) and torch.isclose(p.sum(), torch.tensor(1.0))
    up = torch.nn.functional.interpolate(mask[None, None], (32, 32), mode="bilinear", align_corners=False)[0, 0]
    assert p[up == 0].sum() == 0 and p[up > 0.5].sum() > 0.6
    sharper = start_probabilities(mask, 32, tau=0.05)
    assert sharper[up > 0.5].sum() > p[up > 0.5].sum()
    flat = start_probabilities(torch.zeros(8, 8), 16)
    assert torch.allclose(flat, torch.full((16, 16), 1 / 256))


def test_starts_are_distinct_pixels_inside_the_map():
    p = torch.zeros(16, 16)
    p[2:6, 9:13] = 1.0
    starts = starts_from_map(p, 10, 16, torch.Generator().manual_seed(0))[:, 0]
    assert starts.shape == (10, 2)
    assert ((starts[:, 0] >= 9) & (starts[:, 0] < 13) & (starts[:, 1] >= 2) & (starts[:, 1] < 6)).all()
    assert len({(int(x), int(y)) for x, y in starts}) == 10
    scene = StrokeSceneConfig(num_strokes=10, canvas=32, segment=0.0).build(torch.Generator().manual_seed(1),
                                                                            torch.device("cpu"), start_map=p)
    first = scene.points.detach()[:, 0]  # the map is resized to the 32-pixel canvas
    assert ((first[:, 0] >= 17) & (first[:, 0] <= 27) & (first[:, 1] >= 3) & (first[:, 1] <= 13)).all()
    random = StrokeSceneConfig(num_strokes=10, init_colour="random", learn_colour=True).build(
        torch.Generator().manual_seed(1), torch.device("cpu"))
    assert random.colours.std(0)[:3].min() > 0 and (random.colours[:, 3] >= 0.5).all()


def test_token_positions_and_the_recording_on_a_tiny_unet():
    model = TextToImageModel(tiny_sd_pipeline())
    tokenizer = model.pipe.tokenizer  # one token per character: "cube" is c, u, b, e</w>
    assert token_positions(tokenizer, "a red cube", ("cube",)) == [5, 6, 7, 8]  # <start>, a</w>, r, e, d</w>, c, ...
    with pytest.raises(UserError, match="'cone' is not in the prompt"):
        token_positions(tokenizer, "a red cube", ("cone",))
    assert sorted(layer_sides(model.network, "cross", 8).values()) == [4, 8, 8, 8]  # mid; down 0, up 1 (two)
    config = AttentionInitConfig(steps=3, resolution=16)
    recorded = record_attention(model, "a red cube", config, seed=0, with_self=True)
    assert recorded.cross.shape == (64, 16) and recorded.self_probs.shape == (64, 64)
    assert torch.allclose(recorded.cross.sum(1), torch.ones(64), atol=1e-4)
    assert torch.allclose(recorded.self_probs.sum(1), torch.ones(64), atol=1e-4)
    maps = attention_maps(model, "a red cube", config, seed=0)
    assert maps.fused.shape == (8, 8) and maps.fused.max() == 1 and maps.image.shape == (3, 16, 16)
