"""``gendistill edit-3d`` (GSEditPro) end to end on small scenes: outputs, masked updates, resume, bad input."""

import json

import pytest
import torch

from gendistill.cli import main
from gendistill.render.gaussian_sets import Placement, concat_gaussians, placed_gaussians
from gendistill.render.gaussians import SPLAT_KEYS, init_from_sphere
from gendistill.render.ply import load_ply, save_ply
from gendistill.shipped import shipped_configs_dir
from gendistill.jobs.edit_3d.config import load_edit3d_config
from gendistill.jobs.edit_3d.run import run_edit_3d
from tiny_pipelines import tiny_sd_pipeline

PRESETS = sorted((shipped_configs_dir() / "edit-3d").glob("*.yaml"))
SMALL = ["batch_size=1", "turntable.frames=3", "turntable.size=16", "progress=false", "localisation.views=2",
         "localisation.every=2", "run.checkpoint_every=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "sd"
    tiny_sd_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory):
    """Two balls of 60 Gaussians side by side (y = -0.6 and +0.6), as the benchmark's scenes."""
    g = torch.Generator().manual_seed(0)
    parts = [placed_gaussians(init_from_sphere(60, 0.6, g, sh_degree=0, opacity=0.5), Placement(0.5, (0.0, y, 0.0)))
             for y in (-0.6, 0.6)]
    return save_ply(concat_gaussians(parts), tmp_path_factory.mktemp("scene") / "two.ply")


def config(model, *extra):
    return load_edit3d_config(shipped_configs_dir() / "edit-3d" / "shapes-edit-3d.yaml",
                              [f"model={model}", *SMALL, *extra])


def test_unselected_gaussians_never_change(tiny, two_objects, tmp_path):
    selection = torch.arange(120) < 60  # the first ball only
    cfg = config(tiny, "iterations=4", "scene.densify.strategy=null")
    result = run_edit_3d(two_objects, "a green cube", "cube", cfg, tmp_path, progress=False, selection=selection)
    before, after = load_ply(two_objects), load_ply(result.ply)
    for key in SPLAT_KEYS:
        assert torch.equal(after.splats[key][~selection], before.splats[key][~selection]), key
    assert not torch.equal(after.sh0[selection], before.sh0[selection])  # the selected ones did move
    assert torch.equal(result.selected, selection)


def test_selection_follows_densification_and_unselected_stay(tiny, two_objects, tmp_path):
    selection = torch.arange(120) < 60
    cfg = config(tiny, "iterations=4", "scene.densify.strategy.refine_start=1", "scene.densify.strategy.refine_every=2",
                 "scene.densify.strategy.grow_grad2d=0.0")
    result = run_edit_3d(two_objects, "a green cube", "cube", cfg, tmp_path, progress=False, selection=selection)
    before, after = load_ply(two_objects), load_ply(result.ply)
    assert len(after) > len(before) and result.selected.shape == (len(after),)
    kept = before.means[~selection]  # every unselected Gaussian is still there, unchanged, still unselected
    match = (after.means[:, None] == kept[None]).all(-1).any(-1)
    assert match.sum() == len(kept) and not result.selected[match].any()


def test_shapes_teacher_end_to_end_through_the_command(two_objects, tmp_path):
    code = main(["edit-3d", str(two_objects), "--prompt", "a green cube", "--target", "cube", "--out", str(tmp_path),
                 "--set", "iterations=2", "--set", "resolution=32", *[a for s in SMALL for a in ("--set", s)]])
    assert code == 0
    for name in ("scene.ply", "before_after.gif", "relevance.png", "curves.png", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["localised"] and 0 < metrics["selected_gaussians"] <= 120


def test_resume_is_exact(tiny, two_objects, tmp_path):
    cfg = config(tiny, "iterations=4")
    straight = run_edit_3d(two_objects, "a green cube", "cube", cfg, tmp_path / "a", progress=False)
    cut = config(tiny, "iterations=4")

    def stop(step, images, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_edit_3d(two_objects, "a green cube", "cube", cut, tmp_path / "b", progress=False, on_step=stop)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["stopped"]  # Ctrl-C still writes outputs
    resumed = run_edit_3d(two_objects, "a green cube", "cube", cut, tmp_path / "b", progress=False, resume=True)
    for key in SPLAT_KEYS:
        assert torch.equal(straight.params.splats[key], resumed.params.splats[key]), key
    assert torch.equal(straight.selected, resumed.selected)


@pytest.mark.parametrize("args, message", [
    (["missing.ply", "--prompt", "a green cube", "--target", "cube"], "no PLY file at missing.ply"),
    (["SCENE", "--prompt", "a green cube", "--target", "sphere"], "--target 'sphere' is not a word of the prompt"),
    (["SCENE", "--prompt", "a green cube", "--target", "cube", "--set", "localisation.every=0"], "localisation.every"),
])
def test_bad_input_is_one_line(two_objects, tmp_path, capsys, args, message):
    args = [str(two_objects) if a == "SCENE" else a for a in args]
    assert main(["edit-3d", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_runs_two_steps_on_tiny_components(preset, tiny, two_objects, tmp_path):
    cfg = load_edit3d_config(preset, [f"model={tiny}", *SMALL, "iterations=2", "resolution=16"])
    result = run_edit_3d(two_objects, "a green cube", "cube", cfg, tmp_path, progress=False)
    assert result.steps == 2 and (tmp_path / "scene.ply").is_file()
