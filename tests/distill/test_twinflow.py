"""The TwinFlow recipe (gendistill.distill.twinflow) on a tiny SD3 model: one network, the flow model's weights
at start, every term finite with gradients, a run on the trainer and its stock-diffusers export."""

from __future__ import annotations

import pytest
import torch

from gendistill.config import load_config
from gendistill.distill.models import DistillBatch
from gendistill.distill.twinflow import TwinFlowConfig, TwinFlowRecipe
from gendistill.errors import UserError
from gendistill.jobs.distill.config import DistillConfig


def tiny_recipe(model, **overrides) -> TwinFlowRecipe:
    return TwinFlowRecipe(model, TwinFlowConfig(embedder_frequency_dim=16, embedder_hidden_dim=16, **overrides))


def batch_of(model, prompts, latents):
    cond, uncond = model.encode_batch(prompts)
    return DistillBatch(list(prompts), cond, uncond, latents)


def test_the_run_holds_one_network_that_starts_as_the_flow_model(tiny_flow_model):
    recipe = tiny_recipe(tiny_flow_model)
    assert list(recipe.modules()) == ["student"] and [p.name for p in recipe.phases()] == ["student"]
    teacher = tiny_flow_model.network
    student = recipe.student.transformer
    assert student is not teacher
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))
    held = sum(p.numel() for m in recipe.modules().values() for p in m.parameters())
    assert held == sum(p.numel() for p in recipe.student.parameters())  # no frozen teacher, no critic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *tiny_flow_model.latent_shape(1)[1:], generator=g)
    cond, _ = tiny_flow_model.encode_batch(["a red cube", "a blue cone"])
    t = torch.tensor([0.7, 0.3])
    flow = teacher(hidden_states=x, timestep=1000 * t, encoder_hidden_states=cond.embeds,
                   pooled_projections=cond.pooled, return_dict=False)[0]
    for r in (t, torch.zeros(2)):  # the untrained interval embedding is zero: any jump is the flow's velocity
        assert torch.allclose(recipe.student(x, t, r, cond), flow, atol=1e-6)
    fake = recipe.student(x, -t, -t, cond)  # the fake trajectory is told apart by the sign of its time
    assert not torch.allclose(fake, flow)


@pytest.mark.parametrize("overrides", [{}, {"twin": False}, {"enhance": 1.5}, {"order": 1},
                                       {"weights": {"rectify": 0.0}}], ids=["twin", "rcgm", "enhance", "order1",
                                                                            "no-rectify"])
def test_every_variant_gives_finite_terms_and_gradients(tiny_flow_model, overrides):
    recipe = tiny_recipe(tiny_flow_model, **overrides)
    latents = torch.randn(2, *tiny_flow_model.latent_shape(1)[1:], generator=torch.Generator().manual_seed(1))
    loss = recipe.loss(batch_of(tiny_flow_model, ["a red cube", "a blue cone"], latents), "student", 0,
                       torch.Generator().manual_seed(2))
    expected = {"base"} if overrides.get("twin") is False else {"base", "real", "fake", "rectify", "consistency"}
    assert set(loss.terms) == expected and torch.isfinite(loss.total)
    loss.total.backward()
    grads = [p.grad for p in recipe.student.transformer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_the_rectify_term_ramps_in_over_its_warmup(tiny_flow_model):
    """rectify_warmup N: the term's weight is step / N (0 at step 0, full from step N); the others are untouched."""
    latents = torch.randn(2, *tiny_flow_model.latent_shape(1)[1:], generator=torch.Generator().manual_seed(1))
    batch = batch_of(tiny_flow_model, ["a red cube", "a blue cone"], latents)
    recipe = tiny_recipe(tiny_flow_model, rectify_warmup=10)
    for step, share in ((0, 0.0), (5, 0.5), (10, 1.0), (40, 1.0)):
        loss = recipe.loss(batch, "student", step, torch.Generator().manual_seed(2))
        others = sum(v for k, v in loss.terms.items() if k != "rectify")
        assert loss.total.item() == pytest.approx(others + share * loss.terms["rectify"], rel=1e-5)


@pytest.mark.parametrize("override, key", [("recipe.order=0", "recipe.order"), ("recipe.delta=0", "recipe.delta"),
                                           ("recipe.rectify_warmup=-1", "recipe.rectify_warmup"),
                                           ("recipe.weights={adversary: 1.0}", "recipe.weights")])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(UserError, match=key):
        load_config(DistillConfig, None, ["recipe.kind=twinflow", override]).recipe.check("recipe")


def test_a_unet_model_and_missing_latents_are_user_errors(tiny_flow_model):
    from tiny_pipelines import tiny_unet, unet_model

    with pytest.raises(UserError, match="flow-matching"):
        tiny_recipe(unet_model(tiny_unet()))
    recipe = tiny_recipe(tiny_flow_model)
    with pytest.raises(UserError, match="with_latents"):
        recipe.loss(batch_of(tiny_flow_model, ["a red cube"], None), "student", 0, torch.Generator())


def test_a_run_exports_a_folder_whose_one_step_is_z_minus_the_jump_from_1_to_0(tmp_path):
    from diffusers import DiffusionPipeline
    from PIL import Image
    from tiny_pipelines import tiny_sd3_pipeline

    from gendistill.backends.meanflow_pipeline import interval_velocity
    from gendistill.jobs.distill.run import run_distill

    tiny_sd3_pipeline(seed=0).save_pretrained(tmp_path / "teacher")
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (24, 20), colour).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a {colour} square")
    overrides = [f"teacher={tmp_path / 'teacher'}", "recipe.kind=twinflow", "recipe.embedder_frequency_dim=16",
                 "recipe.embedder_hidden_dim=16", "trainer.steps=2", "trainer.checkpoint_every=1",
                 "trainer.eval_every=0", "trainer.ema_decay=0.5", "trainer.optimizers={student: {lr: 1.0e-3}}",
                 "data.source=images", f"data.image_folder={images}", "data.batch_size=2",
                 "eval.during_training_samples=0"]
    result = run_distill(load_config(DistillConfig, None, overrides), tmp_path / "run", progress=False)
    pipe = DiffusionPipeline.from_pretrained(result.pipeline, trust_remote_code=True)
    assert type(pipe.scheduler).__name__ == "FlowMapEulerDiscreteScheduler"
    size = pipe.transformer.config.sample_size
    noise = torch.randn(1, pipe.transformer.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    latents = pipe("a red square", num_inference_steps=1, latents=noise, guidance_scale=1.0,
                   output_type="latent").images
    embeds, _, pooled, _ = pipe.encode_prompt("a red square", None, None, do_classifier_free_guidance=False)
    ones = torch.full((1,), 1000.0)
    with torch.no_grad():
        u = interval_velocity(pipe.transformer, pipe.interval_embedder, noise, ones, torch.zeros(1), embeds, pooled)
    assert torch.allclose(latents, noise - u, atol=1e-5)
