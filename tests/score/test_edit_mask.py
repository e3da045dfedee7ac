"""LUSD's mask pieces against what they must give on known inputs."""

import pytest
import torch

from gendistill.score.edit_mask import (direction_scale, edited_word, normalised_mask, progressive,
                                        spread_by_self_attention, token_map, token_positions)
from tiny_pipelines import tiny_tokenizer


@pytest.mark.parametrize("source, target, word", [
    ("a red cube", "a blue cube", "cube"), ("a red cube", "a red sphere", "sphere"), ("", "a green cone", "cone"),
    ("a cat on a mat", "a dog on a mat", "dog"), ("a red cube", "a red cube", "cube")])
def test_edited_word(source, target, word):
    assert edited_word(source, target) == word


def test_token_positions_find_the_last_subtoken(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    ids = tok("a red cube").input_ids
    piece = tok("cube", add_special_tokens=False).input_ids
    (pos,) = token_positions(tok, "a red cube", "cube")
    assert ids[pos] == piece[-1] and ids[pos - len(piece) + 1:pos + 1] == piece
    with pytest.raises(ValueError, match="not a word"):
        token_positions(tok, "a red cube", "sphere")


def _probs(maps: torch.Tensor, tokens: int = 5, position: int = 2) -> torch.Tensor:
    """Cross-attention probabilities (B, heads=2, s*s, tokens) whose column ``position`` is ``maps``."""
    b, s, _ = maps.shape
    probs = torch.full((b, 2, s * s, tokens), 0.1)
    probs[..., position] = maps.flatten(1)[:, None]
    return probs


def test_token_map_reads_the_column_and_identity_self_attention_keeps_it():
    cmap = torch.rand(1, 4, 4)
    out = token_map([_probs(cmap), _probs(cmap)], [2])
    assert torch.allclose(out, cmap)
    eye = torch.eye(16)[None, None].expand(1, 3, 16, 16)
    assert torch.allclose(spread_by_self_attention(out, [eye]), cmap, atol=1e-6)


def test_uniform_self_attention_spreads_to_the_mean():
    cmap = torch.rand(1, 4, 4)
    uniform = torch.full((1, 1, 16, 16), 1 / 16)
    spread = spread_by_self_attention(cmap, [uniform])
    assert torch.allclose(spread, torch.full_like(spread, cmap.mean().item()), atol=1e-6)


def test_normalised_mask_spans_zero_to_one_and_progressive_blends_it_in():
    mask = normalised_mask(torch.rand(1, 4, 4) * 3 + 1, (8, 8))
    assert mask.shape == (1, 1, 8, 8) and mask.min() == 0 and mask.max() == 1
    assert torch.equal(progressive(mask, 0, 10), torch.ones_like(mask))
    assert torch.allclose(progressive(mask, 9, 10), mask)


def test_direction_scale_matches_the_reference_schedule():
    # LUSD's run.py defaults (0.15, 0.01, speed 5) over 300 steps: 0.1491 at the start, 0.0109 at the end
    assert direction_scale(0, 300, 0.15, 0.01, 5) == pytest.approx(0.1491, abs=1e-4)
    assert direction_scale(299, 300, 0.15, 0.01, 5) == pytest.approx(0.0109, abs=1e-4)
    assert direction_scale(150, 300, 0.15, 0.01, 5) < direction_scale(149, 300, 0.15, 0.01, 5)


def test_power_zero_keeps_the_map_and_power_two_applies_the_matrix_twice():
    cmap = torch.rand(1, 4, 4)
    s = torch.rand(1, 1, 16, 16).softmax(dim=-1)
    assert torch.allclose(spread_by_self_attention(cmap, [s], power=0), cmap, atol=1e-6)
    once = spread_by_self_attention(cmap, [s])
    twice = spread_by_self_attention(cmap, [s], power=2)
    assert torch.allclose(twice, spread_by_self_attention(once, [s]), atol=1e-5)
