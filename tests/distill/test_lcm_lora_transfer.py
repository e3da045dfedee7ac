"""The shipped LCM-LoRA (``shapes-lcm-lora``, trained on the shipped teacher) as its users use it: loaded with
stock ``load_lora_weights`` onto the teacher and onto a differently fine-tuned copy of the teacher (made here by
the ``shapes-finetune`` recipe), it gives few-step samples of the right prompts on both (issue 12, item 6)."""

import pytest
import torch
from diffusers import DiffusionPipeline, LCMScheduler

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import load_config
from gendistill.domains.shapes.evaluation import ShapesEvaluator, evaluate_model
from gendistill.jobs.distill.config import DistillConfig
from gendistill.jobs.distill.run import run_distill
from gendistill.shipped import resolve_model_name, resolve_preset

SAMPLES = 80


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """40 steps of whole-UNet fine-tuning at lr 1e-4: a copy of the teacher with its own weights."""
    overrides = ["trainer.steps=40", "trainer.optimizers.student.lr=1e-4", "trainer.checkpoint_every=1000",
                 "eval.num_samples=2", "eval.teacher_steps=[1]", "eval.student_steps=[1]", "eval.grid_prompts=1"]
    config = load_config(DistillConfig, resolve_preset("shapes-finetune"), overrides)
    return run_distill(config, tmp_path_factory.mktemp("finetune"), progress=False).pipeline


@pytest.fixture(scope="module")
def evaluator():
    return ShapesEvaluator.load(n_per_scene=4)


def quality(folder, steps: int, evaluator, lora: bool):
    pipe = DiffusionPipeline.from_pretrained(folder)
    if lora:
        pipe.load_lora_weights(resolve_model_name("shapes-lcm-lora"))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    return evaluate_model(TextToImageModel(pipe), evaluator, steps, guidance=0.0, num_samples=SAMPLES)


def test_the_fine_tune_is_a_different_model(fine_tune):
    teacher = DiffusionPipeline.from_pretrained(resolve_model_name("shapes-teacher")).unet.state_dict()
    tuned = DiffusionPipeline.from_pretrained(fine_tune).unet.state_dict()
    change = sum((tuned[k] - teacher[k]).pow(2).sum() for k in teacher) ** 0.5
    size = sum(v.pow(2).sum() for v in teacher.values()) ** 0.5
    assert change / size > 1e-3


@pytest.mark.parametrize("base", ["teacher", "fine-tune"])
def test_the_lora_gives_few_step_samples_on_the_teacher_and_on_a_fine_tune(base, fine_tune, evaluator):
    folder = resolve_model_name("shapes-teacher") if base == "teacher" else fine_tune
    with torch.inference_mode():
        one_step_plain = quality(folder, 1, evaluator, lora=False)
        one_step = quality(folder, 1, evaluator, lora=True)
        four_steps = quality(folder, 4, evaluator, lora=True)
    # measured (shipped teacher / a 100-step fine-tune): 1 step FID 2.07 -> 0.73 and 1.93 -> 0.80 with the LoRA
    assert one_step.fid <= 0.6 * one_step_plain.fid
    assert one_step.prompt_accuracy >= 0.95 and four_steps.prompt_accuracy >= 0.95
    assert four_steps.fid <= 1.2  # measured 0.76 (teacher) and 0.92 (fine-tune); the 4-step teacher DDIM: 0.58
