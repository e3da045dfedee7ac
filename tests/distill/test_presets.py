"""Every distillation preset in configs/distill runs two steps on tiny components of the same classes and
writes a student that stock diffusers loads."""

from pathlib import Path

import pytest
from diffusers import DiffusionPipeline
from PIL import Image

from gendistill.config import load_config
from gendistill.distill.config import DistillConfig
from gendistill.distill.run import run_distill
from tiny_pipelines import tiny_sd_pipeline, tiny_sdxl_pipeline

PRESETS = sorted((Path(__file__).parents[2] / "configs" / "distill").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    tiny_sd_pipeline(root / "sd", seed=0)
    tiny_sdxl_pipeline(root / "sdxl", seed=0)
    (root / "prompts.txt").write_text("a red cube\na blue sphere\n")
    images = root / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 30), colour).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a {colour} square")
    return root


def tiny_overrides(preset: Path, root: Path) -> list[str]:
    teacher = root / ("sdxl" if preset.name.startswith("sdxl") else "sd")
    return [f"teacher={teacher}", "trainer.steps=2", "trainer.checkpoint_every=1", "trainer.eval_every=0",
            "trainer.mixed_precision=no", "data.batch_size=2", f"data.prompts_file={root / 'prompts.txt'}",
            f"data.image_folder={root / 'images'}", "eval.during_training_samples=0", "eval.num_samples=2",
            "eval.teacher_steps=[2]", "eval.student_steps=[1]", "eval.grid_prompts=2"]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_runs_two_steps_on_tiny_components(preset, tiny_teachers, tmp_path):
    config = load_config(DistillConfig, preset, tiny_overrides(preset, tiny_teachers))
    if config.recipe.KIND == "progressive":
        config.recipe.steps_per_stage = 1
    if getattr(config.recipe, "regression_pairs", 0):
        config.recipe.regression_pairs = 2
    result = run_distill(config, tmp_path, progress=False)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "curves.png").is_file()
    assert (tmp_path / "checkpoints" / "latest").is_file()
    pipe = DiffusionPipeline.from_pretrained(result.pipeline)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    if config.data.source == "shapes":
        assert (tmp_path / "metrics.json").is_file() and (tmp_path / "grid.png").is_file()
