"""The shapes CLIP: its contrastive recipe learns on the one trainer, and its folder is open_clip's."""

import pytest
import torch

from tiny_image3d import build_tiny_clip
from gendistill.domains.shapes.clip_training import ClipBatch, ClipRecipe, contrastive_loss, soft_targets
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer


def test_soft_targets_spread_over_same_caption_columns():
    targets = soft_targets(["a red cube", "a blue cone", "a red cube"])
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets[0, 0] == targets[0, 2] == 0.5 and targets[0, 1] == 0 and targets[1, 1] == 1


def test_contrastive_loss_is_low_for_matching_features_and_high_for_swapped_ones():
    features = torch.nn.functional.normalize(torch.eye(4), dim=1)
    targets = soft_targets(["a", "b", "c", "d"])
    matched = contrastive_loss(features, features, torch.tensor(20.0), targets)
    swapped = contrastive_loss(features, features.roll(1, 0), torch.tensor(20.0), targets)
    assert matched < 0.01 < 5 < swapped


def test_the_clip_recipe_lowers_its_loss_on_the_trainer(tmp_path):
    from gendistill.domains.shapes.dataset import make_batch

    model, tokenizer, _ = build_tiny_clip()
    data = make_batch(16, torch.Generator().manual_seed(0), view_phrase_prob=0.0)
    batch = ClipBatch(data.images, [c.split(",")[0] for c in data.captions])
    recipe = ClipRecipe(model, tokenizer)
    config = TrainerConfig(steps=25, seed=0, optimizers={"clip": OptimizerConfig(kind="adamw", lr=3e-3)},
                           checkpoint_every=0, log_every=1)
    result = Trainer(recipe, config, tmp_path, lambda step, g: batch, progress=False).fit()
    losses = [row["clip/loss"] for row in result.history]
    assert losses[-1] < 0.6 * losses[0]


def test_a_saved_clip_loads_with_open_clip_and_embeds_the_same(tiny_clip):
    import open_clip

    from gendistill.backends.open_clip_model import ClipImageEncoder

    encoder = ClipImageEncoder.load(tiny_clip)
    stock = open_clip.create_model(f"local-dir:{tiny_clip}").eval()
    images = torch.rand(2, 3, 64, 64)
    ours = encoder.embed_images(images)
    from gendistill.backends.open_clip_model import preprocess

    with torch.no_grad():
        theirs = torch.nn.functional.normalize(stock.encode_image(preprocess(images, 64)), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert ours.shape == (2, 8) and torch.allclose(ours.norm(dim=1), torch.ones(2))
    texts = encoder.embed_texts(["a red cube", "a blue cone"])
    assert texts.shape == (2, 8) and not torch.allclose(texts[0], texts[1])


def test_a_folder_without_open_clip_files_is_a_user_error(tmp_path):
    from gendistill.backends.open_clip_model import load_clip
    from gendistill.errors import UserError

    with pytest.raises(UserError, match="not an open_clip folder"):
        load_clip(tmp_path)
