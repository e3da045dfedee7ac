"""Random labelled batches and fixed splits of the shapes world."""

import pytest
import torch

from gendistill.domains.shapes import (
    COLOURS,
    SHAPES,
    fixed_split,
    make_batch,
    parse_caption,
    parse_view,
    render,
    split_generator,
    view_phrase,
)
from gendistill.errors import UserError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small renders gain nothing from intra-op threads, and on a busy 2-core box they thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_make_batch_fields_agree_with_each_other():
    batch = make_batch(24, torch.Generator().manual_seed(5), view_phrase_prob=0.5)
    assert len(batch) == 24
    assert batch.images.shape == (24, 3, 64, 64) and batch.alpha.shape == (24, 1, 64, 64)
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert batch.shape_ids.dtype == batch.colour_ids.dtype == torch.int64
    with_view = 0
    for i, (scene, cam, text) in enumerate(zip(batch.scenes, batch.cameras, batch.captions)):
        assert SHAPES[batch.shape_ids[i]] == scene.shape and list(COLOURS)[batch.colour_ids[i]] == scene.colour
        assert parse_caption(text) == scene
        view = parse_view(text)
        assert view is None or view == view_phrase(cam)
        with_view += view is not None
        assert -10 <= cam.elevation_deg <= 60
    assert 0 < with_view < 24
    torch.testing.assert_close(batch.images[7], render(batch.scenes[7], batch.cameras[7]).rgb)


def test_view_phrase_probability_extremes():
    never = make_batch(8, torch.Generator().manual_seed(0), view_phrase_prob=0.0)
    always = make_batch(8, torch.Generator().manual_seed(0), view_phrase_prob=1.0)
    assert all(parse_view(t) is None for t in never.captions)
    assert all(parse_view(t) is not None for t in always.captions)
    with pytest.raises(UserError):
        make_batch(2, torch.Generator(), view_phrase_prob=1.5)


def test_make_batch_is_deterministic_and_prefix_stable():
    a = make_batch(12, torch.Generator().manual_seed(11))
    b = make_batch(12, torch.Generator().manual_seed(11))
    c = make_batch(5, torch.Generator().manual_seed(11))
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.cameras == b.cameras
    assert torch.equal(a.images[:5], c.images) and a.captions[:5] == c.captions
    d = make_batch(12, torch.Generator().manual_seed(12))
    assert a.cameras != d.cameras


def test_fixed_splits_are_reproducible_and_disjoint():
    train = fixed_split(16, "train")
    assert torch.equal(train.images, fixed_split(16, "train").images)
    heldout = fixed_split(16, "heldout")
    assert not set(train.cameras) & set(heldout.cameras)
    seeds = {split_generator(s, seed).initial_seed() for s in ("train", "heldout") for seed in range(4)}
    assert len(seeds) == 8
    with pytest.raises(UserError):
        fixed_split(4, "test")


def test_batches_cover_every_class():
    batch = make_batch(200, torch.Generator().manual_seed(1), supersample=1, size=16)
    assert set(batch.shape_ids.tolist()) == set(range(len(SHAPES)))
    assert set(batch.colour_ids.tolist()) == set(range(len(COLOURS)))
    assert batch.images.shape == (200, 3, 16, 16)
