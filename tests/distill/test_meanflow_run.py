"""MeanFlow distillation on the one trainer (gendistill distill on a tiny SD3 teacher): the exported folder that
stock diffusers samples at 1, 2 and 4 steps, equal to gendistill's own sampler; student_init, exact resume and
gendistill generate on it."""

import pytest
import torch

from gendistill.config import load_config
from gendistill.distill.meanflow import MeanFlowConfig, MeanFlowRecipe
from gendistill.errors import UserError
from gendistill.jobs.distill.config import DistillConfig


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory):
    """Two MeanFlow steps of ``gendistill distill`` on a tiny SD3 teacher (no T5) and a captioned image folder."""
    from PIL import Image
    from tiny_pipelines import tiny_sd3_pipeline

    from gendistill.jobs.distill.run import run_distill

    root = tmp_path_factory.mktemp("meanflow")
    tiny_sd3_pipeline(seed=0).save_pretrained(root / "teacher")
    images = root / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (24, 20), colour).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a {colour} square")
    result = run_distill(load_config(DistillConfig, None, _run_overrides(root, 2)), root / "run", progress=False)
    return result, root


def _run_overrides(root, steps: int) -> list[str]:
    return [f"teacher={root / 'teacher'}", "recipe.kind=meanflow", "recipe.ratio_r_neq_t=1.0",
            "recipe.embedder_frequency_dim=16", "recipe.embedder_hidden_dim=16", f"trainer.steps={steps}",
            "trainer.checkpoint_every=1", "trainer.eval_every=0", "trainer.ema_decay=0.5",
            "trainer.optimizers={student: {lr: 1.0e-3}}", "data.source=images",
            f"data.image_folder={root / 'images'}", "data.batch_size=2", "eval.during_training_samples=0"]


def test_a_trained_student_exports_a_folder_stock_diffusers_samples_at_1_2_and_4_steps(trained_student):
    from diffusers import DiffusionPipeline

    result, root = trained_student
    assert (root / "run" / "checkpoints" / "latest").is_file()
    pipe = DiffusionPipeline.from_pretrained(result.pipeline, trust_remote_code=True)  # the card's one-liner
    assert pipe.text_encoder_3 is None and type(pipe).__name__ == "MeanFlowStableDiffusion3Pipeline"
    assert type(pipe.scheduler).__name__ == "FlowMapEulerDiscreteScheduler" and pipe.scheduler.config.shift == 3.0
    assert pipe.interval_embedder.linear_2.weight.abs().sum() > 0  # the interval embedding trained
    for steps in (1, 2, 4):
        images = pipe("a red square", num_inference_steps=steps, output_type="pt",
                      generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_the_exported_pipeline_equals_gendistills_own_sampler_and_generate(trained_student):
    from diffusers import DiffusionPipeline

    from gendistill.backends.generation import GenerationRequest, generate
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.distill.meanflow import MeanFlowStudent, sample_meanflow

    result, _ = trained_student
    pipe = DiffusionPipeline.from_pretrained(result.pipeline, trust_remote_code=True, text_encoder_3=None,
                                             tokenizer_3=None)
    model = TextToImageModel(load_pipeline(str(result.pipeline)))  # gendistill trusts only its own pipeline.py
    student = MeanFlowStudent(model.network, model.interval_embedder)
    cond, _ = model.encode("a blue square", None, 2)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for steps in (1, 2, 4):
        ours = sample_meanflow(student, noise, cond, steps, shift=3.0)
        stock = pipe("a blue square", num_images_per_prompt=2, num_inference_steps=steps, latents=noise,
                     output_type="latent").images
        assert torch.equal(ours, stock), steps
    for guidance, nfe in ((0.0, 2), (3.0, 4)):  # gendistill generate: same noise, CFG on u as the pipeline's
        request = GenerationRequest(prompt="a blue square", steps=2, guidance=guidance, seed=5, num_images=2)
        generated = generate(model, request, progress=False)
        stock = pipe("a blue square", num_images_per_prompt=2, num_inference_steps=2, output_type="latent",
                     guidance_scale=guidance, generator=torch.Generator().manual_seed(5)).images
        assert torch.equal(generated.latents, stock) and generated.nfe == nfe


def test_student_init_continues_from_an_exported_student(trained_student, tiny_flow_model):
    """Stage 2 (bootstrap, or vanilla MeanFlow on data) starts from the stage-1 export: transformer and embedder."""
    from diffusers import DiffusionPipeline

    result, root = trained_student
    pipe = DiffusionPipeline.from_pretrained(result.pipeline, trust_remote_code=True)
    config = MeanFlowConfig(embedder_frequency_dim=16, embedder_hidden_dim=16, bootstrap=True, guidance_scale=1.0,
                            student_init=str(result.pipeline))
    recipe = MeanFlowRecipe(tiny_flow_model, config)
    for ours, theirs in ((recipe.student.transformer, pipe.transformer),
                         (recipe.student.interval_embedder, pipe.interval_embedder)):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    with pytest.raises(UserError, match="recipe.student_init"):
        MeanFlowRecipe(tiny_flow_model, MeanFlowConfig(student_init=str(result.pipeline)))  # 256-wide embedder
    with pytest.raises(UserError, match="recipe.student_init"):
        MeanFlowRecipe(tiny_flow_model, MeanFlowConfig(student_init=str(root / "images")))


def test_a_resumed_run_ends_with_the_same_student(trained_student):
    from safetensors.torch import load_file

    from gendistill.jobs.distill.run import run_distill

    _, root = trained_student  # its run stopped after step 2, as if killed there
    straight = run_distill(load_config(DistillConfig, None, _run_overrides(root, 3)), root / "straight",
                           progress=False)
    resumed = run_distill(load_config(DistillConfig, None, _run_overrides(root, 3)), root / "run", resume=True,
                          progress=False)
    for part in ("transformer", "interval_embedder"):
        a = load_file(straight.pipeline / part / "diffusion_pytorch_model.safetensors")
        b = load_file(resumed.pipeline / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gendistill_generate_samples_the_exported_folder(trained_student, tmp_path, capsys):
    from gendistill.cli import main

    result, _ = trained_student
    args = ["generate", "--model", str(result.pipeline), "--prompt", "a red square", "--steps", "4", "--guidance",
            "0", "--num-images", "2", "--out", str(tmp_path / "grid.png")]
    assert main(args) == 0 and (tmp_path / "grid.png").is_file()
    assert "FlowMapEulerDiscreteScheduler, NFE 4 per image" in capsys.readouterr().out
    assert main([*args[:-2], "--sampler", "euler", "--out", str(tmp_path / "x.png")]) == 2
    assert "samples by its own flow map" in capsys.readouterr().err
