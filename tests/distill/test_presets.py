"""Every distillation preset in configs/distill runs two steps on tiny components of the same classes and
writes a student that stock diffusers loads."""

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from gendistill.config import load_config
from gendistill.jobs.distill.config import DistillConfig
from gendistill.jobs.distill.run import run_distill
from tiny_pipelines import fit_recipe_to_tiny_teacher, make_tiny_teachers, tiny_teacher_kind

PRESETS = sorted((Path(__file__).parents[2] / "configs" / "distill").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    return make_tiny_teachers(tmp_path_factory.mktemp("teachers"))


def tiny_overrides(preset: Path, root: Path) -> list[str]:
    teacher = root / tiny_teacher_kind(preset)
    return [f"teacher={teacher}", "trainer.steps=2", "trainer.checkpoint_every=1", "trainer.eval_every=0",
            "trainer.mixed_precision=no", "data.batch_size=2", f"data.prompts_file={root / 'prompts.txt'}",
            f"data.image_folder={root / 'images'}", "eval.during_training_samples=0", "eval.num_samples=2",
            "eval.teacher_steps=[2]", "eval.student_steps=[1]", "eval.grid_prompts=2"]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_two_steps_on_tiny_components(preset, tiny_teachers, tmp_path):
    config = load_config(DistillConfig, preset, tiny_overrides(preset, tiny_teachers))
    fit_recipe_to_tiny_teacher(config)
    result = run_distill(config, tmp_path, progress=False)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "curves.png").is_file()
    assert (tmp_path / "checkpoints" / "latest").is_file()
    pipe = DiffusionPipeline.from_pretrained(result.pipeline, trust_remote_code=True)  # phased, meanflow: pipeline.py
    network = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    assert type(network).__name__ in ("UNet2DConditionModel", "SD3Transformer2DModel")
    card = (result.pipeline / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers") and "num_inference_steps=" in card
    assert (result.pipeline / "training_config.yaml").read_text() == (tmp_path / "config.yaml").read_text()
    if config.data.source == "shapes":
        assert (tmp_path / "metrics.json").is_file() and (tmp_path / "grid.png").is_file()
        assert "| student |" in card  # the teacher-vs-student table


def test_killed_and_resumed_distillation_ends_with_the_same_student(tiny_teachers, tmp_path):
    from safetensors.torch import load_file

    preset = Path(__file__).parents[2] / "configs" / "distill" / "sd15-dmd2.yaml"
    overrides = tiny_overrides(preset, tiny_teachers) + ["trainer.steps=3", "trainer.ema_decay=0.9",
                                                         "recipe.fake_updates=2"]
    straight = run_distill(load_config(DistillConfig, preset, overrides), tmp_path / "a", progress=False)
    killed = load_config(DistillConfig, preset, overrides[:-3] + ["trainer.steps=2", "trainer.ema_decay=0.9",
                                                                   "recipe.fake_updates=2"])
    run_distill(killed, tmp_path / "b", progress=False)  # stops after step 2, as if killed there
    resumed = run_distill(load_config(DistillConfig, preset, overrides), tmp_path / "b", resume=True, progress=False)
    a = load_file(straight.pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed.pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_key_and_wrong_type_fail_before_any_work(tmp_path, capsys):
    from gendistill.cli import main

    assert main(["distill", "--set", "trainer.stepz=3", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key 'trainer.stepz'" in capsys.readouterr().err
    assert main(["distill", "--set", "recipe.fake_updates=many", "--out", str(tmp_path / "y")]) == 2
    assert "recipe.fake_updates must be an int" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_evaluation_during_training_records_quality_and_sample_grids(tiny_teachers, tmp_path):
    import json

    preset = Path(__file__).parents[2] / "configs" / "distill" / "shapes-dmd2.yaml"
    overrides = tiny_overrides(preset, tiny_teachers) + ["trainer.eval_every=1", "eval.during_training_samples=2",
                                                         "recipe.fake_updates=1"]
    result = run_distill(load_config(DistillConfig, preset, overrides), tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step-0000001.png", "step-0000002.png"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {r["steps"] for r in metrics["student"]} == {1} and metrics["teacher"][0]["steps"] == 2
    assert result.report is not None and 0 <= result.report.student[0].prompt_accuracy <= 1


def test_no_config_is_the_shapes_dmd2_preset(tmp_path, monkeypatch):
    """``gendistill distill --out DIR`` trains the shipped 1-step student's recipe."""
    from gendistill.cli import main
    from gendistill.jobs.distill import run as run_module

    seen = []
    monkeypatch.setattr(run_module, "run_distill", lambda config, *a, **k: seen.append(config) or _Written())
    assert main(["distill", "--out", str(tmp_path / "run")]) == 0
    preset = Path(__file__).parents[2] / "configs" / "distill" / "shapes-dmd2.yaml"
    assert seen == [load_config(DistillConfig, preset)] and seen[0].recipe.gan_weight > 0


class _Written:
    written, pipeline, train_seconds = False, None, 0.0


def test_ctrl_c_keeps_the_student_and_a_checkpoint_and_resume_finishes_it(tiny_teachers, tmp_path, monkeypatch):
    """A KeyboardInterrupt inside step 3 (mid-step: no checkpoint of it) exports the student as it is, writes
    why it stopped, and --resume from the step-2 checkpoint ends where an uninterrupted run does."""
    import json

    from safetensors.torch import load_file

    from gendistill.distill.dmd import DMD2Recipe

    preset = Path(__file__).parents[2] / "configs" / "distill" / "sd15-dmd2.yaml"
    overrides = tiny_overrides(preset, tiny_teachers) + ["trainer.steps=3", "recipe.fake_updates=1"]
    straight = run_distill(load_config(DistillConfig, preset, overrides), tmp_path / "a", progress=False)
    real = DMD2Recipe.loss

    def interrupted(self, batch, phase, step, generator):
        if step == 2 and phase == "generator":
            raise KeyboardInterrupt
        return real(self, batch, phase, step, generator)

    monkeypatch.setattr(DMD2Recipe, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_distill(load_config(DistillConfig, preset, overrides), tmp_path / "b", progress=False)
    stopped = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert (stopped["stopped"], stopped["stop_reason"], stopped["steps"]) == (True, "interrupted", 2)
    assert DiffusionPipeline.from_pretrained(tmp_path / "b" / "pipeline") is not None
    monkeypatch.setattr(DMD2Recipe, "loss", real)
    said = []
    resumed = run_distill(load_config(DistillConfig, preset, overrides), tmp_path / "b", resume=True,
                          progress=False, log=said.append)
    assert said == ["resumed from step-0000002"]
    a = load_file(straight.pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed.pipeline / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
