"""Students as the score of score distillation: each guided its own way (``TextToImageModel.guidance_kind``),
with the network passes that way costs, and LoRA students loaded onto their base (``backends.score_model``)."""

import json

import pytest
import torch

from gendistill.backends.multi_cfg_pipeline import two_scale_embedding
from gendistill.backends.score_model import load_score_model, lora_folder
from gendistill.backends.student_card import StudentCard
from gendistill.errors import UserError
from gendistill.jobs.text_to_3d.config import load_text3d_config
from gendistill.jobs.text_to_3d.run import run_text_to_3d
from gendistill.score.teacher import Teacher
from tiny_pipelines import tiny_sd_pipeline

DISTILLED = StudentCard(recipe="dmd2", steps=1, guidance=0.0, teacher="shapes-teacher")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny pipeline saved three times: no card, a teacher's card (guidance 2), a distilled student's card."""
    root = tmp_path_factory.mktemp("priors")
    for name, card in (("plain", None), ("teacher", StudentCard(guidance=2.0)), ("student", DISTILLED)):
        tiny_sd_pipeline(root / name, seed=0)
        if card is not None:
            card.write(root / name)
    return root


def network_calls(model):
    """Batch sizes and ``timestep_cond`` of every forward of the model's network (a forward hook)."""
    calls = []
    model.network.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((args[0].shape[0], kwargs.get("timestep_cond"))),
        with_kwargs=True)
    return calls


def probe(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *model.latent_shape(1)[1:]), generator=g)
    sigma = torch.full((n,), 1.5)
    return x, sigma


def test_a_distilled_students_guided_score_is_its_conditional_pass_alone(folders):
    model = load_score_model(str(folders / "student"))
    assert model.guidance_kind == "distilled" and model.card == DISTILLED
    teacher, calls = Teacher(model), network_calls(model)
    x, sigma = probe(model)
    cond = teacher.conditions(["a red cube", "a blue sphere"])
    with torch.no_grad():
        guided = teacher.guided(2, 7.5)(x, sigma, cond)
        conditional = teacher.denoiser()(x, sigma, cond)
    torch.testing.assert_close(guided, conditional, rtol=0, atol=0)
    assert [b for b, _ in calls] == [2, 2] and teacher.passes_per_prediction == 1


def test_cfg_on_a_distilled_student_and_on_a_teacher_takes_both_branches(folders):
    for model in (load_score_model(str(folders / "student"), cfg_on_distilled=True),
                  load_score_model(str(folders / "teacher")), load_score_model(str(folders / "plain"))):
        assert model.guidance_kind == "cfg"
        teacher, calls = Teacher(model), network_calls(model)
        x, sigma = probe(model)
        cond, uncond = teacher.conditions(["a red cube"] * 2), teacher.unconditional(2)
        with torch.no_grad():
            guided = teacher.guided(2, 7.5)(x, sigma, cond)
            d_c, d_u = teacher.denoiser()(x, sigma, cond), teacher.denoiser()(x, sigma, uncond)
        torch.testing.assert_close(guided, d_u + 7.5 * (d_c - d_u), rtol=1e-4, atol=1e-5)
        assert calls[0][0] == 4 and teacher.passes_per_prediction == 2


def test_the_multi_cfg_student_gets_its_two_scale_embedding_with_no_negative():
    model = load_score_model("shapes-multi-cfg")
    assert model.guidance_kind == "embedded"
    teacher, calls = Teacher(model), network_calls(model)
    x, sigma = probe(model, n=3)
    with torch.no_grad():
        teacher.guided(3, 7.5)(x, sigma, teacher.conditions(["a red cube"] * 3))
    (batch, embedding), = calls
    dim = model.network.config.time_cond_proj_dim
    expected = two_scale_embedding(torch.tensor([7.5]), torch.tensor([0.0]), dim)
    assert batch == 3 and torch.equal(embedding.float().cpu(), expected.expand(3, -1))


def lora_student_folder(base, folder, card: StudentCard | None):
    """Random (non-zero) rank-4 adapters on ``base``'s UNet, saved as a diffusers LoRA folder with ``card``."""
    from diffusers import StableDiffusionPipeline

    from gendistill.backends.lora import lora_student, save_lora

    unet = StableDiffusionPipeline.from_pretrained(base).unet
    student = lora_student(unet, rank=4)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    save_lora(student, folder)
    if card is not None:
        card.write(folder)
    return student


def test_a_lora_student_is_fused_into_the_base_its_card_names(folders, tmp_path):
    card = StudentCard(recipe="lcm", steps=4, guidance=0.0, teacher=str(folders / "plain"))
    student = lora_student_folder(folders / "plain", tmp_path / "lora", card)
    assert lora_folder(str(tmp_path / "lora")) == tmp_path / "lora" and lora_folder(str(folders / "plain")) is None
    model = load_score_model(str(tmp_path / "lora"))
    assert model.card == card and model.guidance_kind == "distilled"
    x, sigma = probe(model)
    t = model.train_sigmas.new_tensor([400, 400]).long()
    cond = Teacher(model).conditions(["a red cube"] * 2).embeds
    with torch.no_grad():
        fused = model.network(x, t, encoder_hidden_states=cond).sample
        reference = student(x, t, encoder_hidden_states=cond).sample
        base = load_score_model(str(folders / "plain")).network(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4)
    assert (fused - base).abs().max() > 1e-3


def test_a_lora_folder_without_a_card_and_a_lora_on_a_lora_are_refused(folders, tmp_path):
    lora_student_folder(folders / "plain", tmp_path / "bare", None)
    with pytest.raises(UserError, match="no gendistill.json"):
        load_score_model(str(tmp_path / "bare"))
    StudentCard(recipe="lcm", guidance=0.0, teacher=str(folders / "plain")).write(tmp_path / "bare")
    with pytest.raises(UserError, match="itself a LoRA"):
        load_score_model(str(tmp_path / "bare"), lora=str(tmp_path / "bare"))


SMALL = ["iterations=3", "batch_size=2", "scene.init.num_points=100", "turntable.size=16", "turntable.frames=2",
         "progress=false", "run.checkpoint_every=0", "cameras.view_prompts=suffix"]


@pytest.mark.parametrize("setting, kind", [("auto", "distilled"), ("cfg", "cfg")])
def test_text_to_3d_records_how_a_student_was_guided(folders, tmp_path, setting, kind):
    config = load_text3d_config(None, [f"model={folders / 'student'}", f"model_guidance={setting}", *SMALL])
    run_text_to_3d("a red cube", config, tmp_path, progress=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["model_guidance"] == kind


def test_model_guidance_must_be_auto_or_cfg():
    with pytest.raises(UserError, match="model_guidance"):
        load_text3d_config(None, ["model_guidance=embedded"])
