"""Multi-CFG distillation (FADA): the guided target's closed form, the student's scale conditioning, the learnt
``<neg>`` token (and only it) in the text encoder, negatives, and config checks."""

import pytest
import torch

from gendistill.backends.multi_cfg_pipeline import NEGATIVE_TOKEN, negative_text, two_scale_embedding
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.distill.models import DistillBatch
from gendistill.distill.multi_cfg import MultiCFGConfig, MultiCFGRecipe, encode_texts, multi_cfg_target
from gendistill.errors import UserError
from gendistill.recipe import Update
from tiny_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def tiny_model():
    return TextToImageModel(tiny_sd_pipeline(seed=0, prediction_type="v_prediction"))


def make_batch(model: TextToImageModel, prompts=("a red cube", "a blue ball", "a red cone")) -> DistillBatch:
    with torch.no_grad():
        cond, uncond = model.encode_batch(list(prompts))
    latents = torch.randn((len(prompts), *model.latent_shape(1)[1:]), generator=torch.Generator().manual_seed(1))
    return DistillBatch(list(prompts), cond, uncond, latents)


def test_target_is_the_three_condition_formula_and_reduces_to_cfg_and_conditional():
    g = torch.Generator().manual_seed(0)
    x0_c, x0_n, x0_u = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    w_c, w_n = torch.tensor([1.0, 2.5, 4.0]), torch.tensor([0.0, 0.5, 2.0])
    got = multi_cfg_target(x0_c, x0_n, x0_u, w_c, w_n)
    for i in range(3):
        expected = x0_u[i] + w_c[i] * (x0_c[i] - x0_u[i]) - w_n[i] * (x0_n[i] - x0_u[i])
        torch.testing.assert_close(got[i], expected)
    ones, zeros = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(multi_cfg_target(x0_c, x0_n, x0_u, ones, zeros), x0_c)
    # w_n = 0 is classifier-free guidance; an empty negative (x0_n = x0_u) makes w_n act on the unconditional
    torch.testing.assert_close(multi_cfg_target(x0_c, x0_n, x0_u, w_c, zeros),
                               x0_u + w_c.view(-1, 1, 1, 1) * (x0_c - x0_u))
    torch.testing.assert_close(multi_cfg_target(x0_c, x0_u, x0_u, w_c, w_n),
                               multi_cfg_target(x0_c, x0_n, x0_u, w_c, zeros) + 0 * w_n.view(-1, 1, 1, 1))


def test_guided_target_is_one_teacher_call_equal_to_three_separate_ones(tiny_model):
    recipe = MultiCFGRecipe(tiny_model, MultiCFGConfig())
    batch = make_batch(tiny_model)
    negatives = ["a blue ball", "", "a red cube"]
    x = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(2)) * 3
    sigma = torch.tensor([0.5, 2.0, 8.0])
    w_c, w_n = torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0.0, 1.0, 1.5])
    teacher = tiny_model.denoiser(network=tiny_model.network)
    neg_cond, _ = tiny_model.encode_batch(negatives)
    x0_c, x0_n, x0_u = (teacher(x, sigma, c) for c in (batch.cond, neg_cond, batch.uncond))
    expected = multi_cfg_target(x0_c, x0_n, x0_u, w_c, w_n)
    torch.testing.assert_close(recipe.guided_target(x, sigma, batch, negatives, w_c, w_n), expected,
                               rtol=1e-4, atol=1e-5)
    # at w_n = 0 it is CFGDenoiser against the empty prompt, per row
    cfg = CFGDenoiser(teacher, batch.uncond.row(1), 3.0)(x[1:2], sigma[1:2], batch.cond.row(1))
    plain = recipe.guided_target(x, sigma, batch, negatives, w_c, torch.zeros(3))[1:2]
    torch.testing.assert_close(plain, cfg, rtol=1e-4, atol=1e-5)


def test_two_scale_embedding_halves_are_diffusers_guidance_embeddings():
    from diffusers import StableDiffusionPipeline

    w_c, w_n = torch.tensor([1.0, 3.5]), torch.tensor([0.0, 1.25])
    emb = two_scale_embedding(w_c, w_n, 512)
    stock = StableDiffusionPipeline.get_guidance_scale_embedding
    torch.testing.assert_close(emb[:, :256], stock(None, w_c - 1, 256))
    torch.testing.assert_close(emb[:, 256:], stock(None, w_n, 256))


def test_student_sees_the_scales_only_through_cond_proj_which_starts_at_zero_and_learns(tiny_model):
    recipe = MultiCFGRecipe(tiny_model, MultiCFGConfig())
    unet = recipe.student.unet
    assert unet.config.time_cond_proj_dim == 512
    assert not unet.time_embedding.cond_proj.weight.any()
    batch = make_batch(tiny_model)
    x, sigma, negatives = batch.latents + 2 * torch.randn_like(batch.latents), torch.full((3,), 2.0), ["", "a", ""]

    def predict(w_c, w_n):
        with torch.no_grad():
            return recipe.student_prediction(x, sigma, batch.cond, negatives, torch.full((3,), w_c),
                                             torch.full((3,), w_n))

    torch.testing.assert_close(predict(1.0, 0.0), predict(4.0, 2.0))
    optimizer = torch.optim.SGD(recipe.phases()[0].parameters, lr=1e-2)
    recipe.loss(batch, "student", 0, torch.Generator().manual_seed(0)).total.backward()
    optimizer.step()
    assert unet.time_embedding.cond_proj.weight.any()
    assert (predict(1.0, 0.0) - predict(4.0, 2.0)).abs().max() > 1e-6


def test_only_the_negative_token_row_moves_even_with_weight_decay(tiny_model):
    recipe = MultiCFGRecipe(tiny_model, MultiCFGConfig(empty_negative_prob=0.0))
    tokenizer, encoder = recipe.tokenizer, recipe.student.text_encoder
    assert NEGATIVE_TOKEN in tokenizer.get_vocab() and NEGATIVE_TOKEN not in tiny_model.pipe.tokenizer.get_vocab()
    token_id = recipe.token_id
    rows_before = recipe.student.token_embedding.detach().clone()
    others_before = {k: v.clone() for k, v in encoder.state_dict().items() if "token_embedding" not in k}
    params = recipe.phases()[0].parameters
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.5)
    batch, g = make_batch(tiny_model), torch.Generator().manual_seed(0)
    for step in range(3):
        optimizer.zero_grad()
        loss = recipe.loss(batch, "student", step, g)
        loss.total.backward()
        optimizer.step()
        recipe.after_update(Update("student", step, {"student": optimizer}, loss))
    rows = recipe.student.token_embedding.detach()
    keep = torch.arange(rows.shape[0]) != token_id
    assert torch.equal(rows[keep], rows_before[keep])
    assert not torch.equal(rows[token_id], rows_before[token_id])
    assert all(torch.equal(v, others_before[k]) for k, v in encoder.state_dict().items() if k in others_before)
    # the prompt half is unchanged by the added token: the student encodes prompts as the teacher does
    torch.testing.assert_close(encode_texts(tokenizer, encoder, batch.prompts), batch.cond.embeds)


def test_negatives_are_the_next_caption_a_listed_prompt_or_empty(tiny_model):
    prompts = ["a", "b", "c"]
    recipe = MultiCFGRecipe(tiny_model, MultiCFGConfig(empty_negative_prob=0.0))
    assert recipe.draw_negatives(prompts, torch.Generator().manual_seed(0)) == ["b", "c", "a"]
    listed = MultiCFGRecipe(tiny_model, MultiCFGConfig(negative_prompts=["x", "y"], empty_negative_prob=0.0))
    assert set(listed.draw_negatives(prompts * 5, torch.Generator().manual_seed(0))) == {"x", "y"}
    empty = MultiCFGRecipe(tiny_model, MultiCFGConfig(empty_negative_prob=1.0))
    assert empty.draw_negatives(prompts, torch.Generator().manual_seed(0)) == ["", "", ""]
    assert negative_text("") == NEGATIVE_TOKEN and negative_text("a b") == f"{NEGATIVE_TOKEN} a b"
    w_c, w_n = recipe.draw_scales(1000, torch.Generator().manual_seed(0))
    assert 1.0 <= w_c.min() and w_c.max() <= 4.0 and 0.0 <= w_n.min() and w_n.max() <= 2.0
    assert 0.2 < (w_n == 0).float().mean() < 0.3  # zero_negative_scale_prob 0.25


@pytest.mark.parametrize("overrides, key", [
    ({"cond_scale_range": [4.0, 1.0]}, "recipe.cond_scale_range"),
    ({"negative_scale_range": [0.0]}, "recipe.negative_scale_range"),
    ({"negative_scale_range": [-1.0, 1.0]}, "recipe.negative_scale_range[0]"),
    ({"negative_prompts": []}, "recipe.negative_prompts"),
    ({"empty_negative_prob": 1.5}, "recipe.empty_negative_prob"),
    ({"zero_negative_scale_prob": -0.1}, "recipe.zero_negative_scale_prob"),
    ({"token_lr": -1e-3}, "recipe.token_lr"),
    ({"data_weight": -1.0}, "recipe.data_weight"),
    ({"teacher_weight": 0.0, "data_weight": 0.0}, "recipe.teacher_weight"),
    ({"weighting": "snr"}, "recipe.weighting"),
    ({"sample_steps": 0}, "recipe.sample_steps"),
])
def test_bad_config_values_name_the_key(overrides, key):
    with pytest.raises(UserError, match=key.replace("[", r"\[").replace("]", r"\]")):
        check_config(MultiCFGConfig(**overrides), "recipe")


def test_sdxl_and_missing_latents_end_in_user_errors(tiny_model):
    with pytest.raises(UserError, match="SDXL"):
        MultiCFGRecipe(TextToImageModel(tiny_sdxl_pipeline(seed=0)), MultiCFGConfig())
    recipe = MultiCFGRecipe(tiny_model, MultiCFGConfig())
    batch = make_batch(tiny_model)
    batch.latents = None
    with pytest.raises(UserError, match="with_latents"):
        recipe.loss(batch, "student", 0, torch.Generator())


def test_preset_loads_and_a_bad_override_names_the_key():
    from pathlib import Path

    from gendistill.config import load_config
    from gendistill.jobs.distill.config import DistillConfig

    preset = Path(__file__).parents[2] / "configs" / "distill" / "shapes-multi-cfg.yaml"
    assert isinstance(load_config(DistillConfig, preset).recipe, MultiCFGConfig)
    with pytest.raises(UserError, match=r"recipe\.empty_negative_prob"):
        load_config(DistillConfig, preset, ["recipe.empty_negative_prob=2"])
