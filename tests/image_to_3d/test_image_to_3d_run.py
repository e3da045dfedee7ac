"""`gendistill image-to-3d` on tiny random components: outputs, presets, resume, user errors."""

import json
from pathlib import Path

import pytest

from gendistill.cli import main as cli_main
from gendistill.config import load_config
from gendistill.jobs.image_to_3d.config import Image3DConfig, load_image3d_config
from gendistill.jobs.image_to_3d.run import run_image_to_3d
from gendistill.render.images import save_png

PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs" / "image-to-3d").glob("*.yaml"))
SMALL = ["iterations=6", "batch_size=2", "scene.init.num_points=150", "turntable.size=16", "turntable.frames=2",
         "progress=false", "scene.densify.strategy.refine_start=2", "scene.densify.strategy.refine_every=2",
         "scene.densify.strategy.grow_grad2d=1e-9", "scene.densify.prune.after=4", "scene.densify.prune.every=2",
         "run.checkpoint_every=3"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from gendistill.domains.shapes import Scene, render_batch
    from gendistill.render.cameras import Camera

    path = tmp_path_factory.mktemp("input") / "red-sphere.png"
    save_png(render_batch([Scene("sphere", "red")], [Camera(0.0, 20.0)]).rgb[0], path)
    return path


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def test_the_command_writes_every_output_and_evaluates_a_caption(tiny_teacher, image, tmp_path, capsys):
    code = cli_main(["image-to-3d", str(image), "--model", str(tiny_teacher), *_sets(SMALL),
                     "--set", "evaluate_caption=a red sphere", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    for name in ("scene.ply", "turntable.gif", "heldout.png", "curves.png", "config.yaml", "input.png", "eval3d.json"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "image-sds" and metrics["steps"] == 6 and metrics["reference_loss_weight"] == 0
    assert metrics["eval3d"]["prompt"] == "a red sphere" and 0 <= metrics["iou_std_over_views"] <= 0.5
    resolved = load_config(Image3DConfig, tmp_path / "config.yaml")
    assert resolved.image == str(image) and resolved.model == str(tiny_teacher)
    assert list((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_runs_two_steps(preset, tiny_teacher, image, tmp_path):
    config = load_image3d_config(preset, [f"model={tiny_teacher}", *SMALL, "iterations=2"])
    seen = []
    result = run_image_to_3d(image, config, tmp_path, progress=False,
                             on_step=lambda step, images, loss: seen.append(images.shape[0]))
    assert result.steps == 2 and (tmp_path / "scene.ply").is_file()
    assert seen == [2 + (config.reference.weight > 0)] * 2  # the reference camera comes on top of the batch


def test_a_killed_run_resumes_to_the_same_scene(tiny_teacher, image, tmp_path):
    config = load_image3d_config(None, [f"model={tiny_teacher}", *SMALL, "reference.weight=100"])
    run_image_to_3d(image, config, tmp_path / "a", progress=False)

    def kill(step, images, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_image_to_3d(image, config, tmp_path / "b", progress=False, on_step=kill)
    said = []
    run_image_to_3d(image, config, tmp_path / "b", progress=False, resume=True, log=said.append)
    assert said == ["resumed from step-0000004"]
    assert (tmp_path / "a" / "scene.ply").read_bytes() == (tmp_path / "b" / "scene.ply").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["{dir}/missing.png"], "no image at"),
    (["{dir}/not-an-image.png"], "IMAGE {dir}/not-an-image.png is not a readable image"),
    (["{image}", "--set", "reference.weight=-1"], "reference.weight must be >= 0"),
    (["{image}", "--set", "evaluate_caption=a plaid cube"], "cannot read caption"),
    (["{image}", "--model", "{dir}/nowhere"], "not a folder or shipped model"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, tiny_teacher, image, tmp_path, capsys):
    (tmp_path / "not-an-image.png").write_text("hello")
    fill = {"dir": tmp_path, "image": image}
    argv = [a.format(**fill) for a in argv]
    model = [] if "--model" in argv else ["--model", str(tiny_teacher)]
    code = cli_main(["image-to-3d", *argv, *model, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message.format(**fill) in err and err.count("\n") == 1, err
