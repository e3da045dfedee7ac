"""Text-to-3D on a NeRF (tiny random pipeline, 16 px): outputs, checkpoint round trip, eval-3d on the run
folder, a stopped run, the blob. Needs the nerf extra (nerfstudio installed)."""

import json

import pytest
import torch

pytest.importorskip("nerfstudio")
pytest.importorskip("skimage")

from gendistill.cli import main as cli_main  # noqa: E402
from gendistill.config import load_config  # noqa: E402
from gendistill.render.cameras import stack_cameras  # noqa: E402
from gendistill.render.nerf.mesh import load_mesh_ply  # noqa: E402
from gendistill.jobs.text_to_3d.config import Text3DConfig, load_text3d_config  # noqa: E402
from gendistill.jobs.text_to_3d.evaluate3d import heldout_cameras  # noqa: E402
from gendistill.jobs.text_to_3d.run import run_text_to_3d  # noqa: E402

pytestmark = pytest.mark.nerf
SMALL = ["scene.kind=nerf", "cameras.view_prompts=shapes", "iterations=20", "batch_size=2", "resolution=16",
         "progress=false", "turntable.size=16", "turntable.frames=3", "scene.num_samples=8", "scene.eval_samples=16",
         "scene.mesh.resolution=24", "scene.field.architecture=tensorf-vm", "scene.field.tensorf_vm.resolution=16"]


def test_twenty_nerf_steps_write_a_mesh_and_a_checkpoint_that_reloads_to_the_same_renders(tiny, tmp_path):
    config = load_text3d_config(None, [f"model={tiny}", *SMALL])
    result = run_text_to_3d("a red sphere", config, tmp_path, progress=False)
    assert result.ply == tmp_path / "scene_mesh.ply" and result.params is None and result.num_gaussians == 0
    for name in ("scene_mesh.obj", "scene_mesh.glb", "field.safetensors", "turntable.gif", "heldout.png",
                 "curves.png", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["representation"] == "nerf" and metrics["steps"] == 20 and metrics["stopped"] is False
    mesh = load_mesh_ply(result.ply)
    assert (metrics["mesh_vertices"], metrics["mesh_faces"]) == (len(mesh.vertices), len(mesh.faces))
    reloaded = load_config(Text3DConfig, tmp_path / "config.yaml").scene.load(tmp_path)
    cameras = stack_cameras(heldout_cameras(16)[:3])
    for ours, theirs in zip(result.scene.render_views(cameras, torch.ones(3)),
                            reloaded.render_views(cameras, torch.ones(3))):
        assert torch.equal(ours, theirs)
    assert cli_main(["eval-3d", str(tmp_path)]) == 0  # eval-3d reads the NeRF run folder: the same numbers
    assert json.loads((tmp_path / "eval3d.json").read_text()) == metrics["eval3d"]


def test_a_stopped_nerf_run_still_writes_its_mesh_checkpoint_and_metrics(tiny, tmp_path):
    class Stop(Exception):
        pass

    def on_step(step, images, loss):
        if step == 1:
            raise Stop

    config = load_text3d_config(None, [f"model={tiny}", *SMALL])
    with pytest.raises(Stop):
        run_text_to_3d("a red sphere", config, tmp_path, progress=False, on_step=on_step)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (metrics["stopped"], metrics["steps"], metrics["iterations"]) == (True, 2, 20)
    assert (tmp_path / "scene_mesh.ply").is_file() and (tmp_path / "field.safetensors").is_file()


def test_a_fresh_field_is_empty_and_the_blob_shows_an_object_while_it_trains():
    config = load_text3d_config(None, SMALL)
    scene = config.scene.build(torch.Generator().manual_seed(0), torch.device("cpu"), config.iterations)
    cameras = stack_cameras(heldout_cameras(16)[:2])
    _, alpha = scene.render_views(cameras, torch.ones(3))
    assert alpha.max() < 0.1  # initial_density: an empty cube, not a grey fog
    trained = scene.render(cameras, torch.ones(3))
    assert trained.alpha[..., 6:10, 6:10].min() > 0.5 and trained.alpha[..., :2, :2].max() < 0.1


def test_nerf_user_errors(tiny, tmp_path, capsys):
    assert cli_main(["text-to-3d", "a red sphere", "--representation", "nerf", "--set",
                     "scene.field.architecture=voxels", "--out", str(tmp_path)]) == 2
    assert "unknown architecture 'voxels'" in capsys.readouterr().err
    assert cli_main(["text-to-3d", "a red sphere", "--representation", "nerf", "--set", "scene.blob_fraction=2",
                     "--out", str(tmp_path)]) == 2
    assert "scene.blob_fraction must be in [0, 1]" in capsys.readouterr().err


def test_a_killed_nerf_run_resumes_to_the_same_field(tiny, tmp_path):
    """Kill after 5 of 8 steps and resume: the same field weights (and blob strength) as an uninterrupted run."""
    from safetensors.torch import load_file

    config = load_text3d_config(None, [f"model={tiny}", *SMALL, "iterations=8", "run.checkpoint_every=2"])
    run_text_to_3d("a red sphere", config, tmp_path / "a", progress=False)

    def kill(step, images, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_text_to_3d("a red sphere", config, tmp_path / "b", progress=False, on_step=kill)
    run_text_to_3d("a red sphere", config, tmp_path / "b", progress=False, resume=True)
    a, b = load_file(tmp_path / "a" / "field.safetensors"), load_file(tmp_path / "b" / "field.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
