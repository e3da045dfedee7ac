"""`gendistill stylize` on tiny components: both modes write their files, the presets run two steps, bad input is
one line with exit code 2."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from gendistill.cli import main as cli_main
from gendistill.config import load_config
from gendistill.jobs.score_2d.stylize import StylizeConfig, StylizeInputs, load_stylize_config, run_stylize
from gendistill.render.images import save_png
from tiny_pipelines import tiny_sd_pipeline

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "stylize").glob("*.yaml"))
FAST = ["progress=false", "device=cpu", "transfer.run.iterations=2", "sample.steps=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_sd_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    save_png(torch.rand(3, 24, 20, generator=g), folder / "content.png")
    save_png(torch.rand(3, 16, 16, generator=g), folder / "reference.png")
    return folder


def test_style_transfer_runs_two_steps_and_writes_its_files(tiny, images, tmp_path):
    config = load_stylize_config(None, [f"model={tiny}", *FAST])
    inputs = StylizeInputs(images / "reference.png", "a red cube", images / "content.png")
    result = run_stylize(inputs, config, tmp_path, progress=False)
    for name in ("stylized.png", "strip.png", "curves.png", "metrics.json", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    assert Image.open(tmp_path / "stylized.png").size == (20, 24)  # the content's size
    assert Image.open(tmp_path / "strip.png").size[0] > 3 * 16  # content | reference | output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode"] == "transfer" and metrics["steps"] == 2 and not metrics["stopped"]
    assert {"ad", "content", "loss"} <= set(metrics["final"]) and result.final["ad"] > 0
    assert load_config(StylizeConfig, tmp_path / "config.yaml").model == str(tiny)
    assert (tmp_path / "checkpoints").is_dir()


@pytest.mark.parametrize("init", ["noise", "adain"])
def test_every_init_runs(init, tiny, images, tmp_path):
    config = load_stylize_config(None, [f"model={tiny}", *FAST, "transfer.run.iterations=1", f"transfer.init={init}"])
    inputs = StylizeInputs(images / "reference.png", "a red cube", images / "content.png")
    assert run_stylize(inputs, config, tmp_path, progress=False).steps == 1


def test_text_to_image_with_a_style_writes_the_images(tiny, images, tmp_path):
    config = load_stylize_config(None, [f"model={tiny}", *FAST, "sample.num_images=2"])
    result = run_stylize(StylizeInputs(images / "reference.png", "a red cube"), config, tmp_path, progress=False)
    assert (tmp_path / "stylized.png").is_file() and (tmp_path / "stylized_1.png").is_file()
    assert result.images.shape == (2, 3, 16, 16) and result.mode == "sample"
    assert json.loads((tmp_path / "metrics.json").read_text())["mode"] == "sample"


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"shapes-stylize", "sd15-stylize"}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
@pytest.mark.parametrize("with_content", [True, False], ids=["transfer", "sample"])
def test_every_preset_runs_two_steps_through_the_cli(preset, with_content, tiny, images, tmp_path, capsys):
    content = ["--content", str(images / "content.png")] if with_content else []
    sets = [item for value in FAST for item in ("--set", value)]
    code = cli_main(["stylize", "--reference", str(images / "reference.png"), "--prompt", "a blue cone", *content,
                     "--config", preset.stem, "--model", str(tiny), "--seed", "3", *sets, "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert "stylized:" in capsys.readouterr().out
    resolved = load_config(StylizeConfig, tmp_path / "config.yaml")
    assert resolved.seed == 3 and resolved.loss == load_config(StylizeConfig, preset).loss


@pytest.mark.parametrize("argv, message", [
    (["--reference", "MISSING", "--prompt", "a red cube"], "--reference MISSING is not a file"),
    (["--reference", "REF", "--prompt", "  "], "the prompt is empty"),
    (["--reference", "REF", "--prompt", "a red cube", "--content", "MISSING"], "--content MISSING is not a file"),
    (["--reference", "BROKEN", "--prompt", "a red cube"], "is not a readable image"),
    (["--reference", "REF", "--prompt", "a red cube", "--set", "transfer.init=zeros"], "transfer.init"),
    (["--reference", "REF", "--prompt", "a red cube", "--set", "loss.layers=0"], "loss.layers must be >= 1"),
    (["--reference", "REF", "--prompt", "a red cube", "--set", "loss.colour=1"], "unknown config key"),
    (["--reference", "REF", "--prompt", "a red cube", "--config", "no-such-preset"], "config file not found"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, images, tmp_path, capsys):
    (tmp_path / "broken.png").write_text("not an image")
    names = {"MISSING": str(tmp_path / "missing.png"), "REF": str(images / "reference.png"),
             "BROKEN": str(tmp_path / "broken.png")}
    argv = [names.get(a, a) for a in argv]
    message = message.replace("MISSING", names["MISSING"])
    assert cli_main(["stylize", *argv, "--set", "model=/nonexistent", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
