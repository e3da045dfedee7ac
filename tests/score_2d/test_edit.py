"""``gendistill edit`` on tiny components: the files, the image's own size, presets, resume and bad input."""

import json

import pytest
import torch

from gendistill.cli import main
from gendistill.config import to_dict
from gendistill.jobs.score_2d.edit import edited_image, load_edit_config, run_edit
from gendistill.render.images import load_image, save_png
from gendistill.shipped import shipped_configs_dir
from tiny_pipelines import tiny_sd_pipeline

PRESETS = sorted((shipped_configs_dir() / "edit").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "sd"
    tiny_sd_pipeline(folder)
    return folder


def tiny_config(tiny, preset=None, steps=2):
    return load_edit_config(preset, [f"model={tiny}", f"run.iterations={steps}", "progress=false"])


def test_residual_output_keeps_the_original_where_nothing_changed():
    original, decoded = torch.rand(3, 20, 24), torch.rand(3, 16, 16)
    assert torch.equal(edited_image(original, decoded, decoded, "residual"), original)
    assert edited_image(original, decoded, decoded, "decoded").shape == original.shape


def test_edit_writes_every_file_at_the_image_size(tiny, tmp_path):
    image = torch.rand(3, 20, 24)
    result = run_edit(image, "a blue cube", tiny_config(tiny), tmp_path, source_prompt="a red cube", progress=False)
    assert result.edited.shape == image.shape and result.steps == 2 and not result.stopped
    for name in ("edited.png", "before_after.png", "mask.png", "curves.png", "metrics.json", "config.yaml",
                 "latents.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert load_image(tmp_path / "edited.png").shape == image.shape
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mask_word"] == "cube" and metrics["steps"] == 2 and metrics["change_l1"] > 0


def test_resume_continues_to_the_same_latents(tiny, tmp_path):
    image = torch.rand(3, 16, 16)
    whole = run_edit(image, "a blue cube", tiny_config(tiny, steps=4), tmp_path / "a", "a red cube", progress=False)
    config = tiny_config(tiny, steps=4)
    config.run.checkpoint_every = 2
    with pytest.raises(KeyboardInterrupt):
        def stop(step, preview, loss):
            if step == 2:
                raise KeyboardInterrupt
        config.run.preview_every = 1
        run_edit(image, "a blue cube", config, tmp_path / "b", "a red cube", progress=False, on_step=stop)
    assert (tmp_path / "b" / "edited.png").is_file()  # an interrupted edit still writes its outputs
    resumed = run_edit(image, "a blue cube", config, tmp_path / "b", "a red cube", progress=False, resume=True)
    assert torch.allclose(resumed.edited, whole.edited, atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_runs_two_steps(tiny, tmp_path, preset):
    config = tiny_config(tiny, preset)
    assert to_dict(config)["method"]["base"] in ("sds", "dds", "difference")
    result = run_edit(torch.rand(3, 16, 16), "a blue cube", config, tmp_path, "a red cube", progress=False)
    assert result.steps == 2


def test_cli_edits_and_refuses_bad_input(tiny, tmp_path, capsys):
    image = save_png(torch.rand(3, 16, 16), tmp_path / "in.png")
    args = ["edit", str(image), "--prompt", "a blue cube", "--source-prompt", "a red cube", "--model", str(tiny),
            "--set", "run.iterations=1", "--set", "progress=false"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "edited.png").is_file()
    assert main(["edit", str(tmp_path / "missing.png"), "--prompt", "x", "--out", str(tmp_path / "o2")]) == 2
    assert "no image at" in capsys.readouterr().err
    assert main([*args[:2], "--prompt", " ", *args[4:], "--out", str(tmp_path / "o3")]) == 2
    assert "target prompt is empty" in capsys.readouterr().err
    assert main([*args, "--method", "no-such-preset", "--out", str(tmp_path / "o4")]) == 2
