"""The NeRF scene's training aids inside a text-to-3D run (tiny random pipeline, 16 px): the coarse-to-fine
schedule, the occupancy grid's refreshes, the planes' total variation in the loss, and an exact resume with
all of them on. Needs the nerf extra (``-m nerf``)."""

import pytest
import torch

pytest.importorskip("nerfstudio")
pytest.importorskip("skimage")

from gendistill.jobs.text_to_3d.config import load_text3d_config  # noqa: E402
from gendistill.jobs.text_to_3d.evaluate3d import heldout_cameras  # noqa: E402
from gendistill.jobs.text_to_3d.run import run_text_to_3d  # noqa: E402
from gendistill.recipe import Update  # noqa: E402
from gendistill.render.cameras import stack_cameras  # noqa: E402
from gendistill.render.nerf.priors import tensorf_total_variation  # noqa: E402

pytestmark = pytest.mark.nerf
SMALL = ["scene.kind=nerf", "cameras.view_prompts=shapes", "iterations=8", "batch_size=2", "resolution=16",
         "progress=false", "turntable.size=16", "turntable.frames=3", "scene.num_samples=8", "scene.eval_samples=16",
         "scene.mesh.resolution=24", "scene.field.architecture=tensorf-vm", "scene.field.tensorf_vm.resolution=16"]
AIDS = ["scene.occupancy.resolution=16", "scene.occupancy.dilation=1", "scene.occupancy.update_every=2", "scene.coarse_scale=0.5",
        "scene.coarse_fraction=0.5", "scene.plane_tv_weight=10", "scene.checkpoint=false"]


def build_scene(overrides):
    config = load_text3d_config(None, [*SMALL, *overrides])
    return config.scene.build(torch.Generator().manual_seed(0), torch.device("cpu"), config.iterations)


def after(scene, step):
    render = scene.render(stack_cameras(heldout_cameras(16)[:1]), torch.ones(3))
    return scene.after_update(Update("scene", step, {}, None), render, None)


def test_the_first_half_renders_small_and_upsamples_to_the_asked_size(monkeypatch):
    import gendistill.render.scenes.nerf as nerf_scene

    sizes = []
    real = nerf_scene.upsample_render
    monkeypatch.setattr(nerf_scene, "upsample_render", lambda rgb, alpha, h, w: sizes.append(rgb.shape[-1])
                        or real(rgb, alpha, h, w))
    scene = build_scene(AIDS)
    cameras = stack_cameras(heldout_cameras(16)[:2])
    stages = []
    for step in range(8):
        scene.step = step
        stages.append(scene.in_coarse_stage())
        render = scene.render(cameras, torch.ones(3), torch.Generator().manual_seed(step))
        assert render.rgb.shape == (2, 3, 16, 16) and render.alpha.shape == (2, 1, 16, 16)
    assert stages == [True] * 4 + [False] * 4 and sizes == [8] * 4


def test_the_grid_is_refreshed_on_its_schedule_and_keeps_the_blob():
    scene = build_scene(AIDS)
    assert scene.occupancy.fraction == 1.0  # all set until the first refresh
    logged = after(scene, 0)
    assert 0.0 < logged["occupied"] < 1.0
    first = scene.occupancy.occupied.clone()
    centre = scene.occupancy.cell_index(torch.zeros(1, 3))[0]
    assert first[tuple(centre)]  # the blob's cells
    scene.occupancy.occupied.fill_(True)
    after(scene, 1)  # not a refresh step (every 2)
    assert scene.occupancy.fraction == 1.0
    after(scene, 2)
    assert scene.occupancy.fraction < 1.0


def test_the_planes_total_variation_is_added_to_the_loss_with_its_weight():
    scene = build_scene(["scene.plane_tv_weight=10"])
    render = scene.render(stack_cameras(heldout_cameras(16)[:1]), torch.ones(3))
    expected = 10 * tensorf_total_variation(scene.field.encoder)
    assert torch.allclose(scene.regularisation(render, 0), expected)
    assert build_scene([]).regularisation(render, 0) is None


def test_without_the_aids_nothing_changes():
    scene = build_scene([])
    assert scene.occupancy is None and not scene.in_coarse_stage() and scene.config.checkpoint


def test_a_killed_run_with_the_aids_resumes_to_the_same_field(tiny, tmp_path):
    from safetensors.torch import load_file

    config = load_text3d_config(None, [f"model={tiny}", *SMALL, *AIDS, "run.checkpoint_every=2"])
    run_text_to_3d("a red sphere", config, tmp_path / "a", progress=False)

    def kill(step, images, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_text_to_3d("a red sphere", config, tmp_path / "b", progress=False, on_step=kill)
    run_text_to_3d("a red sphere", config, tmp_path / "b", progress=False, resume=True)
    a, b = load_file(tmp_path / "a" / "field.safetensors"), load_file(tmp_path / "b" / "field.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
