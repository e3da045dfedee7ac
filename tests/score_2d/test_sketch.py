"""`run_sketch` and `gendistill sketch` on a tiny random pipeline: every output, the SVG as cairosvg draws it,
the presets, Ctrl-C keeping the strokes, and bad input as one line with exit code 2."""

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from gendistill.cli import main as cli_main
from gendistill.config import load_config
from gendistill.jobs.score_2d.sketch import SketchConfig, load_sketch_config, run_sketch
from gendistill.render.images import load_image
from gendistill.render.scenes.strokes import StrokeSceneConfig
from gendistill.score.augmented import AugmentedSDSConfig
from tiny_pipelines import tiny_sd_pipeline

PRESETS = sorted((Path(__file__).resolve().parents[2] / "gendistill" / "configs" / "sketch").glob("*.yaml"))
TINY = ["strokes.num_strokes=5", "strokes.canvas=24", "attention.steps=2", "run.preview_every=1",
        "progress=false"]
FILES = ("sketch.svg", "sketch.png", "strokes.safetensors", "progress.gif", "init.png", "curves.png",
         "metrics.json", "config.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_sd_pipeline(folder)
    return folder


def _cairo_psnr(svg: Path, png: Path) -> float:
    cairosvg = pytest.importorskip("cairosvg")
    from PIL import Image

    drawn = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg.read_bytes()))).convert("RGBA")
    white = Image.new("RGBA", drawn.size, (255, 255, 255, 255))
    theirs = torch.from_numpy(np.asarray(Image.alpha_composite(white, drawn).convert("RGB")).copy())
    mse = (load_image(png) - theirs.permute(2, 0, 1) / 255).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def test_two_steps_write_every_output_and_cairosvg_draws_the_png(tiny, tmp_path):
    config = load_sketch_config(None, [f"model={tiny}", "run.iterations=2", *TINY, "strokes.canvas=64"])
    seen = []
    result = run_sketch("  a red cube ", config, tmp_path, on_step=lambda s, img, loss: seen.append((s, img.shape)))
    assert [s for s, _ in seen] == [0, 1] and seen[0][1] == (3, 64, 64)
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    root = ET.fromstring((tmp_path / "sketch.svg").read_text().split("\n", 1)[1])
    assert root.get("version") == "1.1" and len(root.findall("{http://www.w3.org/2000/svg}path")) == 5
    assert iio.imread(tmp_path / "progress.gif", index=None).shape == (4, 64, 64, 3)  # start, 2 previews, end
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["num_strokes"] == 5 and metrics["method"] == "asds"
    assert metrics["init"] == "attention" and metrics["stopped"] is False
    assert result.steps == 2 and not result.stopped
    resolved = load_config(SketchConfig, tmp_path / "config.yaml")
    assert resolved.prompt == "a red cube" and isinstance(resolved.method, AugmentedSDSConfig)
    loaded = StrokeSceneConfig(num_strokes=5, canvas=64).load(tmp_path)
    assert torch.equal(loaded.points.detach(), result.scene.points.detach())
    assert _cairo_psnr(tmp_path / "sketch.svg", tmp_path / "sketch.png") >= 30


def test_an_interrupt_keeps_the_strokes_so_far(tiny, tmp_path):
    config = load_sketch_config(None, [f"model={tiny}", "run.iterations=5", "init=random", *TINY])

    def interrupt(step, image, loss):
        if step == 1:  # 0-based: after the second step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sketch("a blue cone", config, tmp_path, on_step=interrupt)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped"] is True and metrics["steps"] == 2
    assert (tmp_path / "sketch.svg").is_file() and (tmp_path / "progress.gif").is_file()
    assert not (tmp_path / "init.png").exists()  # the random init has no attention map


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_runs_two_steps_through_the_cli(preset, tiny, tmp_path, capsys):
    sets = [item for value in TINY[1:] for item in ("--set", value)]  # --strokes sets the count
    code = cli_main(["sketch", "a green torus", "--config", str(preset), "--model", str(tiny), "--strokes", "3",
                     "--iterations", "2", "--seed", "4", *sets, "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert "sketch:" in capsys.readouterr().out
    resolved = load_config(SketchConfig, tmp_path / "config.yaml")
    preset_config = load_config(SketchConfig, preset)
    assert resolved.seed == 4 and resolved.strokes.num_strokes == 3 and resolved.run.iterations == 2
    assert resolved.method == preset_config.method and resolved.strokes.width == preset_config.strokes.width
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2


def test_presets_exist():
    assert {p.stem for p in PRESETS} == {"shapes-sketch", "sd15-sketch"}


@pytest.mark.parametrize("argv, message", [
    (["  ", "--out", "OUT"], "the prompt is empty"),
    (["a red cube", "--strokes", "0", "--out", "OUT"], "--strokes must be >= 1, got 0"),
    (["a red cube", "--set", "strokes.canvas=2", "--out", "OUT"], "strokes.canvas must be >= 8"),
    (["a red cube", "--set", "init=xdog", "--out", "OUT"], "init"),
    (["a red cube", "--set", "method.kind=vsd", "--out", "OUT"], "method.kind must be one of asds, sds"),
    (["a red cube", "--config", "no-such-preset", "--out", "OUT"], "no-such-preset"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert cli_main(["sketch", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_a_word_not_in_the_prompt_is_a_user_error(tiny, tmp_path, capsys):
    code = cli_main(["sketch", "a red cube", "--model", str(tiny), "--set", "attention.words=[cone]",
                     "--set", "progress=false", "--out", str(tmp_path)])
    assert code == 2 and "'cone' is not in the prompt" in capsys.readouterr().err


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny, tmp_path):
    base = [f"model={tiny}", "run.checkpoint_every=1", *TINY]
    straight = run_sketch("a red cube", load_sketch_config(None, [*base, "run.iterations=3"]), tmp_path / "a")
    run_sketch("a red cube", load_sketch_config(None, [*base, "run.iterations=2"]), tmp_path / "b")
    resumed = run_sketch("a red cube", load_sketch_config(None, [*base, "run.iterations=3"]), tmp_path / "b",
                         resume=True)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 3 and resumed.steps == 3
    assert torch.allclose(resumed.scene.points.detach(), straight.scene.points.detach(), atol=1e-5)
