"""The shapes evaluator: Fréchet distance, diversity and accuracy metrics, and the shipped classifier."""

from __future__ import annotations

import math

import pytest
import torch

from gendistill.domains.shapes import metrics as M
from gendistill.domains.shapes.camera import sample_cameras
from gendistill.domains.shapes.classifier import (DEFAULT_DIR, ClassifierOutput, ShapeClassifier,
                                                  classifier_fingerprint, load_classifier, save_classifier)
from gendistill.domains.shapes.dataset import fixed_split
from gendistill.domains.shapes.raycast import render_batch
from gendistill.domains.shapes.scene import COLOURS, SHAPES, Scene
from gendistill.domains.shapes.classifier_training import (
    PHASE, ClassifierBatch, ClassifierRecipe, ClassifierTrainingConfig, RenderWindow, augment, initial_classifier,
)
from gendistill.errors import UserError
from gendistill.jobs.train_classifier import train_classifier
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- Fréchet distance

def _closed_form(mu_a, var_a, mu_b, var_b) -> float:
    """Fréchet distance of two Gaussians whose covariances share eigenvectors (eigenvalues var_a, var_b)."""
    return ((mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum()).item()


def test_frechet_distance_matches_closed_form_for_diagonal_covariances():
    g = _gen(1)
    mu_a, mu_b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    var_a = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    var_b = torch.rand(6, generator=g, dtype=torch.float64) * 3
    a, b = M.GaussianStats(mu_a, torch.diag(var_a)), M.GaussianStats(mu_b, torch.diag(var_b))
    got = M.frechet_distance_from_stats(a, b)
    assert got == pytest.approx(_closed_form(mu_a, var_a, mu_b, var_b), rel=1e-10)


def test_frechet_distance_matches_closed_form_for_rotated_commuting_covariances():
    g = _gen(2)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    var_a = torch.rand(8, generator=g, dtype=torch.float64) + 0.5
    var_b = torch.rand(8, generator=g, dtype=torch.float64)
    var_b[:3] = 0  # a singular covariance is allowed
    mu_a, mu_b = torch.zeros(8, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    a = M.GaussianStats(mu_a, q @ torch.diag(var_a) @ q.T)
    b = M.GaussianStats(mu_b, q @ torch.diag(var_b) @ q.T)
    want = _closed_form(mu_a, var_a, mu_b, var_b)
    assert M.frechet_distance_from_stats(a, b) == pytest.approx(want, rel=1e-8)
    assert M.frechet_distance_from_stats(b, a) == pytest.approx(want, rel=1e-8)


def test_frechet_distance_of_samples_zero_for_identical_sets_and_shift_for_translated_ones():
    g = _gen(3)
    feats = torch.randn(40, 64, generator=g) @ torch.randn(64, 64, generator=g)  # N < F: rank-deficient
    assert M.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6 * feats.var(0).sum().item())
    shift = torch.randn(64, generator=g)
    want = shift.double().square().sum().item()
    assert M.frechet_distance(feats, feats + shift) == pytest.approx(want, rel=1e-4)


def test_frechet_distance_grows_with_mismatch():
    g = _gen(4)
    real = torch.randn(500, 16, generator=g)
    close, far = torch.randn(500, 16, generator=g), 2 * torch.randn(500, 16, generator=g)
    assert M.frechet_distance(real, close) < 0.1 * M.frechet_distance(real, far)


# ----------------------------------------------------------------------------- diversity

def _real_like(n_prompts: int, n: int, g: torch.Generator) -> dict:
    centres = 5 * torch.randn(n_prompts, 32, generator=g)
    return {i: centres[i] + torch.randn(n, 32, generator=g) for i in range(n_prompts)}


def test_diversity_is_one_for_real_like_samples():
    g = _gen(5)
    real = _real_like(4, 200, g)
    assert M.diversity(real, real) == pytest.approx(1.0, abs=1e-12)
    fresh = {k: v.mean(0) + torch.randn(200, 32, generator=g) for k, v in real.items()}  # new draws, same law
    assert M.diversity(fresh, real) == pytest.approx(1.0, abs=0.05)


def test_diversity_is_small_for_mode_collapse():
    g = _gen(6)
    real = _real_like(3, 16, g)
    collapsed = {k: v[:1].expand(8, -1) + 1e-3 * torch.randn(8, 32, generator=g) for k, v in real.items()}
    assert M.diversity(collapsed, real) < 0.3
    identical = {k: v[:1].expand(4, -1) for k, v in real.items()}
    assert M.diversity(identical, real) == 0.0


def test_diversity_rejects_unknown_prompt_and_single_samples():
    real = _real_like(2, 4, _gen(7))
    with pytest.raises(KeyError):
        M.diversity({"nope": real[0]}, real)
    with pytest.raises(ValueError):
        M.diversity({0: real[0][:1]}, real)


# ----------------------------------------------------------------------------- accuracy

def _one_hot_logits(ids: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(ids), k).float() * 5 - 1


def test_accuracies_on_hand_made_logits():
    colours = list(COLOURS)
    scenes = [Scene("sphere", "red"), Scene("cube", "blue"), Scene("torus", "pink"), Scene("cone", "green")]
    shape_pred = [SHAPES.index("sphere"), SHAPES.index("cube"), SHAPES.index("torus"), SHAPES.index("cube")]
    colour_pred = [colours.index("red"), colours.index("green"), colours.index("pink"), colours.index("green")]
    out = ClassifierOutput(_one_hot_logits(shape_pred, len(SHAPES)), _one_hot_logits(colour_pred, len(colours)),
                           torch.zeros(4, 8))
    assert M.shape_accuracy(out, scenes) == pytest.approx(3 / 4)
    assert M.colour_accuracy(out, scenes) == pytest.approx(3 / 4)
    assert M.prompt_accuracy(out, scenes) == pytest.approx(2 / 4)


# ----------------------------------------------------------------------------- classifier

def test_classifier_outputs_and_save_load_round_trip(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ShapeClassifier().eval()
    images = torch.rand(5, 3, 64, 64, generator=_gen(8))
    out = model.classify(images, batch_size=2)
    assert out.shape_logits.shape == (5, len(SHAPES)) and out.colour_logits.shape == (5, len(COLOURS))
    assert out.features.shape == (5, model.config.feature_dim) and 64 <= model.config.feature_dim <= 128
    loaded = load_classifier(save_classifier(model, tmp_path / "clf"))
    again = loaded.classify(images, batch_size=2)
    for name in ("shape_logits", "colour_logits", "features"):
        assert torch.equal(getattr(out, name), getattr(again, name))


def test_load_classifier_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no shapes classifier"):
        load_classifier(tmp_path / "missing")


def test_reference_stats_round_trip(tmp_path):
    feats = {("cube", "red"): torch.randn(3, 8, generator=_gen(9)),
             ("torus", "blue"): torch.randn(3, 8, generator=_gen(10))}
    stats = M.ReferenceStats(M.gaussian_stats(torch.cat(list(feats.values()))), feats, 3, 11)
    M.save_reference_stats(stats, tmp_path / "ref.safetensors")
    back = M.load_reference_stats(tmp_path / "ref.safetensors")
    assert back.n_per_scene == 3 and back.seed == 11
    assert torch.equal(back.gaussian.cov, stats.gaussian.cov)
    assert all(torch.equal(back.features_by_scene[k], v) for k, v in feats.items())


# ----------------------------------------------------------------------------- on real renders

@pytest.fixture(scope="module")
def shipped():
    return load_classifier(DEFAULT_DIR)


def test_shipped_classifier_is_accurate_on_fresh_heldout_renders(shipped):
    batch = fixed_split(200, "heldout", seed=1)  # not the renders the model card was measured on
    out = shipped.classify(batch.images)
    assert M.prompt_accuracy(out, batch.scenes) >= 0.98
    assert shipped.config.feature_dim == out.features.shape[1]


def test_shipped_folder_is_small_and_has_its_reference_stats(shipped):
    total = sum(f.stat().st_size for f in DEFAULT_DIR.iterdir())
    assert total < 2 * 1024 * 1024
    stats = M.cached_reference_stats(shipped, DEFAULT_DIR)  # must load, not render
    assert stats.classifier_id == classifier_fingerprint(shipped)
    assert len(stats.features_by_scene) == len(SHAPES) * len(COLOURS)


def test_evaluate_images_on_real_renders_and_on_a_collapsed_generator(shipped):
    reference = M.cached_reference_stats(shipped, DEFAULT_DIR)
    prompts = [Scene("torus", "orange"), Scene("cone", "cyan"), Scene("cube", "purple")]
    scenes = [scene for scene in prompts for _ in range(8)]
    images = render_batch(scenes, sample_cameras(len(scenes), _gen(12))).rgb
    real = M.evaluate_images(shipped, images, scenes, reference)
    assert real.num_images == 24 and real.prompt_accuracy == 1.0 and real.colour_accuracy == 1.0
    assert 0.5 < real.diversity < 2.0
    collapsed = M.evaluate_images(shipped, images[[i - i % 8 for i in range(24)]], scenes, reference)
    assert collapsed.diversity == 0.0 and collapsed.prompt_accuracy == 1.0 and collapsed.fid > real.fid
    wrong_colours = M.evaluate_images(shipped, images[:, [1, 2, 0]], scenes, reference)
    assert wrong_colours.colour_accuracy < 0.5 and wrong_colours.fid > 5 * real.fid
    grey = M.evaluate_images(shipped, torch.full_like(images, 0.5), scenes, reference)
    assert grey.fid > 20 * real.fid
    two_each = M.evaluate_images(shipped, images[[0, 1, 8, 9]], scenes[0:2] + scenes[8:10], reference)
    assert two_each.num_images == 4 and math.isfinite(two_each.diversity) and math.isfinite(two_each.fid)


def test_matched_reference_mixes_scenes_in_prompt_proportions():
    g = _gen(15)
    feats = {("cube", "red"): torch.randn(4, 8, generator=g),
             ("torus", "blue"): 3 + torch.randn(6, 8, generator=g)}
    reference = M.ReferenceStats(M.gaussian_stats(torch.cat(list(feats.values()))), feats, 4, 0)
    mixed = M.matched_reference(reference, [("cube", "red")] * 2 + [("torus", "blue")])
    want = (2 * feats[("cube", "red")].double().mean(0) + feats[("torus", "blue")].double().mean(0)) / 3
    torch.testing.assert_close(mixed.mean, want)
    only_cube = M.matched_reference(reference, [("cube", "red")])
    torch.testing.assert_close(only_cube.cov, M.gaussian_stats(feats[("cube", "red")]).cov)
    with pytest.raises(KeyError):
        M.matched_reference(reference, [("cone", "red")])


def test_cached_reference_stats_writes_once_and_follows_the_classifier(tmp_path, shipped):
    kwargs = dict(n_per_scene=2, seed=3, scenes=[Scene("cone", "red"), Scene("sphere", "green")])
    first = M.cached_reference_stats(shipped, tmp_path, **kwargs)
    assert len(list(tmp_path.iterdir())) == 1 and first.n_per_scene == 2
    assert set(first.features_by_scene) == {("cone", "red"), ("sphere", "green")}
    again = M.cached_reference_stats(shipped, tmp_path, **kwargs)
    assert torch.equal(again.gaussian.mean, first.gaussian.mean)
    other = ShapeClassifier(shipped.config).eval()
    assert M.cached_reference_stats(other, tmp_path, **kwargs).classifier_id != first.classifier_id


# ----------------------------------------------------------------------------- training

TINY_TRAINING = dict(steps=4, batch_size=4, seed=5, fresh_per_step=2, pool_size=4, checkpoint_every=0)


def _train(run_dir, **kwargs):
    config = ClassifierTrainingConfig(**{**TINY_TRAINING, **kwargs.pop("config", {})})
    return train_classifier(config, run_dir, progress=False, log=lambda line: None, **kwargs)


def test_training_is_deterministic_and_augmentation_keeps_range(tmp_path):
    model_a, report_a = _train(tmp_path / "a")
    model_b, report_b = _train(tmp_path / "b")
    assert report_a.losses == report_b.losses and len(report_a.losses) == 4 and report_a.renders == 4 + 3 * 2
    assert classifier_fingerprint(model_a) == classifier_fingerprint(model_b) and not model_a.training
    images = torch.rand(6, 3, 64, 64, generator=_gen(13))
    aug = augment(images, _gen(14))
    assert aug.shape == images.shape and 0 <= aug.min() and aug.max() <= 1
    assert torch.equal(aug, augment(images, _gen(14)))


def test_render_window_draws_from_the_last_steps_and_replays_after_a_resume():
    config = ClassifierTrainingConfig(**TINY_TRAINING)  # window: pool_size // fresh_per_step = 2 steps
    straight = RenderWindow(config)
    batches = [straight(step, _gen(step)) for step in range(4)]
    assert [len(b.images) for b in batches] == [4, 4, 4, 4] and straight.rendered == 4 + 3 * 2
    assert set(straight._kept) == {2, 3}
    resumed = RenderWindow(config)  # a fresh process at step 3 re-renders steps 1 and 2
    again = resumed(3, _gen(3))
    assert torch.equal(again.images, batches[3].images) and torch.equal(again.labels, batches[3].labels)
    assert resumed.rendered == 2 + 2 + 2


def test_kill_and_resume_of_the_classifier_gives_the_uninterrupted_weights(tmp_path):
    straight, _ = _train(tmp_path / "straight")

    def stop_after_two(step, row, losses):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", on_step=stop_after_two)
    resumed, report = _train(tmp_path / "resumed", resume=True)
    assert classifier_fingerprint(resumed) == classifier_fingerprint(straight) and len(report.losses) == 4


def test_the_classifier_recipe_learns_a_tiny_set(tmp_path):
    """On 40 fixed renders (one per scene), accuracy goes from chance to most of the set."""
    batch = fixed_split(40, "train", seed=3)
    labels = torch.stack([batch.shape_ids, batch.colour_ids], dim=1)
    model = initial_classifier(0)

    def accuracy() -> float:
        return M.prompt_accuracy(model.classify(batch.images), batch.scenes)

    def batches(step, generator):
        idx = torch.randint(0, 40, (16,), generator=generator)
        return ClassifierBatch(batch.images[idx], labels[idx])

    before = accuracy()
    config = TrainerConfig(steps=40, seed=0, grad_clip=None, checkpoint_every=0, log_every=1,
                           optimizers={PHASE: OptimizerConfig(lr=3e-3, warmup_steps=5)})
    result = Trainer(ClassifierRecipe(model), config, tmp_path, batches, progress=False).fit()
    assert before < 0.2 and accuracy() > 0.5
    losses = [row[f"{PHASE}/loss"] for row in result.history]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
