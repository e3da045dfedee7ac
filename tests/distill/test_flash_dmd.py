"""Flash-DMD: the DM gradient only above the split and the GAN term only below it, joint reward fine-tuning
(gradients reach the student through the VAE; distill_weight 0 leaves the reward alone), the shapes-world
rewards against the renderer's ground truth, CLIP's reward on a tiny random open_clip model, trainer runs."""

import json

import pytest
import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.distill.flash_dmd import FlashDMDConfig, FlashDMDRecipe
from gendistill.distill.rewards import BrightnessReward, ClipReward, RewardConfig, SizeReward, luminance
from gendistill.domains.shapes import Camera, Scene, render_batch
from gendistill.errors import UserError
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer
from tiny_pipelines import tiny_sd_pipeline, tiny_unet, unet_model

from test_dmd import batch_fn, fixed_batch, grads  # noqa: E402  (shared fixtures)


def tiny_unet_model(seed=0):
    torch.manual_seed(seed)
    return unet_model(tiny_unet())


def tiny_pipeline_model():
    """A teacher with a VAE (16x16 images from 8x8 latents), for the reward's decode."""
    return TextToImageModel(tiny_sd_pipeline(seed=0))


def record_timesteps(recipe):
    """Timesteps the teacher UNet sees (only the DM term calls it) and those the fake-score UNet sees while
    the GAN term runs (classifier and generator alike)."""
    dm, gan, in_gan = [], [], [False]
    recipe.distill.models.teacher_unet.register_forward_pre_hook(lambda m, args: dm.extend(args[1].tolist()))
    recipe.distill.fake_unet.register_forward_pre_hook(
        lambda m, args: gan.extend(args[1].tolist()) if in_gan[0] else None)
    gan_logits = recipe.distill.gan_logits

    def flagged(*args):
        in_gan[0] = True
        try:
            return gan_logits(*args)
        finally:
            in_gan[0] = False

    recipe.distill.gan_logits = flagged
    return dm, gan


@pytest.mark.parametrize("split,steps", [(0.6, 1), (0.3, 2)])
def test_dm_term_sees_only_timesteps_at_or_above_the_split_and_gan_only_below(split, steps):
    recipe = FlashDMDRecipe(tiny_unet_model(), FlashDMDConfig(split=split, student_steps=steps, gan_weight=1e-2))
    dm, gan = record_timesteps(recipe)
    for seed in range(8):
        for phase in ("fake_score", "generator"):
            recipe.loss(fixed_batch(), phase, 0, torch.Generator().manual_seed(seed))
    s = round(split * 1000)
    assert dm and gan
    assert min(dm) >= s and max(dm) <= 980
    assert max(gan) <= s - 1 and min(gan) >= 0
    assert max(dm) - min(dm) > 50 and max(gan) - min(gan) > 50  # spread over each range, not pinned


def test_ranges_round_to_adjacent_disjoint_timesteps():
    config = FlashDMDConfig(split=0.5, dm_t_max=0.98, gan_t_min=0.0)
    for T, expected in ((1000, ((500, 980), (0, 499))), (100, ((50, 98), (0, 49)))):
        dm, gan = config.ranges(T)
        assert (dm.indices(T), gan.indices(T)) == expected


def test_distill_weight_zero_is_pure_reward_tuning_and_the_reward_reaches_only_the_student():
    config = FlashDMDConfig(distill_weight=0.0, reward_weight=1.0, reward=RewardConfig(name="size", samples=2))
    recipe = FlashDMDRecipe(tiny_pipeline_model(), config)
    assert [p.name for p in recipe.phases()] == ["generator"]
    dm, gan = record_timesteps(recipe)
    loss = recipe.loss(fixed_batch(), "generator", 0, torch.Generator().manual_seed(1))
    loss.total.backward()
    assert set(loss.terms) == {"reward"} and not dm and not gan
    assert 0.0 <= loss.terms["reward"] <= 1.0
    assert sum(g.abs().sum() for g in grads(recipe.student_unet) if g is not None) > 0
    vae = recipe.vae
    frozen_parts = grads(vae) + grads(recipe.distill.fake_unet) + grads(recipe.distill.models.teacher_unet)
    assert all(g is None for g in frozen_parts)
    assert all(p.requires_grad is False for p in recipe.distill.models.teacher_unet.parameters())


def test_joint_loss_is_distillation_minus_weighted_reward():
    """Same draws with and without the reward: the totals differ by exactly reward_weight * reward."""
    model = tiny_pipeline_model()
    base = FlashDMDConfig(guidance_scale=3.0, gan_weight=1e-2)
    joint = FlashDMDConfig(guidance_scale=3.0, gan_weight=1e-2, reward_weight=0.5,
                           reward=RewardConfig(name="brightness", samples=2, resolution=8))
    torch.manual_seed(0)  # the same GAN head in both
    plain = FlashDMDRecipe(model, base).loss(fixed_batch(), "generator", 0, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    both = FlashDMDRecipe(model, joint).loss(fixed_batch(), "generator", 0, torch.Generator().manual_seed(2))
    assert {"dm", "gan", "reward"} <= set(both.terms) and "reward" not in plain.terms
    assert both.total.item() == pytest.approx(plain.total.item() - 0.5 * both.terms["reward"], rel=1e-4, abs=1e-6)


def test_trainer_runs_flash_dmd_with_the_reward_on_tiny_components(tmp_path):
    config = FlashDMDConfig(fake_updates=2, student_steps=2, gan_weight=1e-2, reward_weight=0.5,
                            reward=RewardConfig(name="size", samples=1))
    recipe = FlashDMDRecipe(tiny_pipeline_model(), config)
    calls = []
    loss = recipe.loss
    recipe.loss = lambda batch, phase, step, generator: calls.append(phase) or loss(batch, phase, step, generator)
    trainer_config = TrainerConfig(steps=3, seed=5, checkpoint_every=0, log_every=1, ema_decay=0.5, optimizers={
        "fake_score": OptimizerConfig(lr=1e-3), "generator": OptimizerConfig(lr=1e-4)})
    before = {k: v.clone() for k, v in recipe.student_unet.state_dict().items()}
    result = Trainer(recipe, trainer_config, tmp_path, batch_fn, progress=False).fit()
    assert calls == ["fake_score", "fake_score", "generator"] * 3
    last = result.history[-1]
    assert {"generator/dm", "generator/gan", "generator/reward", "fake_score/denoise", "fake_score/gan"} <= set(last)
    assert all(torch.isfinite(torch.tensor(v)) for row in result.history for v in row.values())
    after = recipe.student_unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


# --- rewards --------------------------------------------------------------------------------------


def renders(scenes, distances):
    cameras = [Camera(30.0, 20.0, d, 35.0, 64, 64) for d in distances]
    return render_batch(scenes, cameras)


def test_size_reward_ranks_the_closer_render_higher_and_matches_its_coverage():
    out = renders([Scene("cube", "red"), Scene("cube", "red")], [4.0, 3.0])
    score = SizeReward()(out.rgb, ["a red cube"] * 2)
    assert score[1] > score[0] + 0.03
    assert torch.allclose(score, out.alpha.mean(dim=(1, 2, 3)), atol=0.02)  # edge pixels count as object


def test_brightness_reward_ranks_the_brighter_colour_higher_and_reads_the_object_pixels():
    out = renders([Scene("sphere", "blue"), Scene("sphere", "yellow")], [4.0, 4.0])
    object_score = BrightnessReward("object")(out.rgb, ["", ""])
    assert object_score[1] > object_score[0] + 0.3
    inside = (out.alpha > 0.99).float()
    truth = (luminance(out.rgb) * inside).sum(dim=(1, 2, 3)) / inside.sum(dim=(1, 2, 3))
    assert torch.allclose(object_score, truth, atol=0.03)
    near_far = renders([Scene("sphere", "blue"), Scene("sphere", "blue")], [4.0, 3.0])
    image_score = BrightnessReward("image")(near_far.rgb, ["", ""])
    assert image_score[0] > image_score[1]  # the whole-image variant prefers less object: hackable on purpose


@pytest.mark.parametrize("reward", [SizeReward(), BrightnessReward("object"), BrightnessReward("image")])
def test_shapes_rewards_are_differentiable(reward):
    images = renders([Scene("torus", "green")], [4.0]).rgb.requires_grad_(True)
    reward(images, ["a green torus"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_clip_reward_on_a_tiny_random_open_clip_model_is_its_cosine_similarity_and_differentiable(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    path = tmp_path / "gendistill-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    reward = RewardConfig(name="clip", clip_model="gendistill-tiny-clip").build()
    assert isinstance(reward, ClipReward)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    prompts = ["a red cube", "a blue sphere", "a red cube"]
    score = reward(images, prompts)
    assert score.shape == (3,) and bool((score.abs() <= 1 + 1e-5).all())
    score.sum().backward()
    assert images.grad.abs().sum() > 0 and all(p.grad is None for p in reward.model.parameters())
    with torch.no_grad():  # open_clip's own forward on the same preprocessed input
        x = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
        mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
        image_features, text_features, _ = reward.model((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1),
                                                        reward.tokenizer(prompts))
    assert torch.allclose(score.detach(), (image_features * text_features).sum(-1), atol=1e-5)


def test_reward_prepare_downsamples_only_larger_images():
    images = torch.rand(2, 3, 16, 16)
    assert RewardConfig(resolution=8).prepare(images).shape == (2, 3, 8, 8)
    assert RewardConfig(resolution=32).prepare(images) is images


@pytest.mark.parametrize("config,message", [
    (FlashDMDConfig(split=0.0), "split"),
    (FlashDMDConfig(split=0.99), "split"),
    (FlashDMDConfig(distill_weight=0.0), "nothing to train"),
    (FlashDMDConfig(reward=RewardConfig(name="aesthetic")), "reward.name"),
])
def test_bad_settings_are_user_errors(config, message):
    with pytest.raises(UserError, match=message):
        FlashDMDRecipe(tiny_unet_model(), config)


def test_reward_needs_a_teacher_with_a_vae():
    with pytest.raises(UserError, match="VAE"):
        FlashDMDRecipe(tiny_unet_model(), FlashDMDConfig(reward_weight=1.0))


def test_student_init_starts_the_generator_from_a_distilled_students_weights(tmp_path):
    """Joint RL on a distilled model: the generator starts from the student folder's UNet, the fake score from
    the teacher's."""
    from tiny_pipelines import tiny_sd_pipeline

    teacher = TextToImageModel(tiny_sd_pipeline(seed=0))
    tiny_sd_pipeline(tmp_path / "student", seed=5)
    recipe = FlashDMDRecipe(teacher, FlashDMDConfig(student_init=str(tmp_path / "student")))
    student = recipe.student_unet.state_dict()
    other = tiny_sd_pipeline(seed=5).unet.state_dict()
    assert all(torch.equal(student[k], other[k]) for k in other)
    fake = recipe.modules()["fake_score"].state_dict()
    assert any(not torch.equal(fake[k], student[k]) for k in student if k in fake)


def test_student_init_of_another_architecture_is_a_clear_error(tmp_path):
    from tiny_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline

    tiny_sdxl_pipeline(tmp_path / "sdxl", seed=0)
    teacher = TextToImageModel(tiny_sd_pipeline(seed=0))
    with pytest.raises(UserError, match="another UNet architecture"):
        FlashDMDRecipe(teacher, FlashDMDConfig(student_init=str(tmp_path / "sdxl")))
