"""`ns-train gendistill-sds`: the entry point is discoverable and its model computes a finite SDS loss with
gradients on random cameras (tiny random pipeline, 16 px). Needs the nerf extra (nerfstudio installed)."""

import math
from dataclasses import replace

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.render.cameras import DISTANCE  # noqa: E402
from gendistill.render.rig import ELEVATION_RANGE_DEG  # noqa: E402
from tiny_pipelines import tiny_sd_pipeline  # noqa: E402

pytestmark = pytest.mark.nerf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_sd_pipeline(folder)
    return folder


def test_the_entry_point_is_discoverable_by_nerfstudio():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert "gendistill-sds" in methods, "reinstall the package metadata: pip install -e . --no-deps"
    config = methods["gendistill-sds"]
    assert config.method_name == "gendistill-sds" and "gendistill" in descriptions["gendistill-sds"]
    assert set(config.optimizers) == {"field_encoder", "field_heads"}
    assert config.pipeline.model.guidance_model.endswith("shapes-teacher")


def test_random_cameras_match_the_shapes_world_and_their_view_phrases():
    from nerfstudio.data.datamanagers.random_cameras_datamanager import random_train_pose

    from gendistill.pipelines.nerfstudio_method import camera_from_angles, gendistill_sds

    dm = gendistill_sds.config.pipeline.datamanager
    torch.manual_seed(0)
    cameras, vertical, central = random_train_pose(
        200, 16, "cpu", radius_mean=dm.radius_mean, radius_std=dm.radius_std, focal_range=dm.focal_range,
        vertical_rotation_range=dm.vertical_rotation_range, jitter_std=dm.jitter_std)
    positions = cameras.camera_to_worlds[:, :3, 3]
    assert torch.allclose(positions.norm(dim=1), torch.full((200,), DISTANCE), atol=1e-4)
    for position, v, c in zip(positions, vertical.tolist(), central.tolist()):
        cam = camera_from_angles(v, c)
        assert torch.allclose(cam.position * DISTANCE / cam.distance, position, atol=1e-3)
    elevations = torch.rad2deg(torch.asin(positions[:, 2] / DISTANCE))
    lo, hi = ELEVATION_RANGE_DEG
    assert lo - 0.1 <= elevations.min() and elevations.max() <= hi + 0.1 and elevations.max() - elevations.min() > 40
    assert camera_from_angles(90.0, 90.0).azimuth_deg == 0.0  # central 90 looks at the front (+x)


def test_the_model_gives_a_finite_sds_loss_with_gradients_on_random_cameras(tiny):
    from nerfstudio.data.datamanagers.random_cameras_datamanager import RandomCamerasDataManager
    from nerfstudio.data.scene_box import SceneBox

    from gendistill.pipelines.nerfstudio_method import GendistillSDSModel, gendistill_sds

    method = gendistill_sds.config.pipeline
    model_config = replace(method.model, guidance_model=str(tiny), prompt="a red cube", num_samples=8,
                           architecture="tensorf-vm")
    model = model_config.setup(scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
                               device="cpu")
    assert isinstance(model, GendistillSDSModel)
    assert not any("unet" in name or "vae" in name for name, _ in model.named_parameters())  # guidance stays out
    datamanager = RandomCamerasDataManager(replace(method.datamanager, train_resolution=16, eval_resolution=16,
                                                   num_eval_angles=2), device="cpu")  # one view a step
    model.train()
    model.set_step(3)
    ray_bundle, batch = datamanager.next_train(3)
    outputs = model(ray_bundle)
    assert outputs["rgb"].shape == (16 * 16, 3) and outputs["accumulation"].max() > 0.1  # the blob is seen
    assert all(p.endswith("view") for p in model.view_prompts(batch))
    losses = model.get_loss_dict(outputs, batch)
    assert set(losses) == {"sds_loss"} and math.isfinite(losses["sds_loss"].item())
    losses["sds_loss"].backward()
    groups = model.get_param_groups()
    grads = [p.grad for params in groups.values() for p in params if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    model.eval()
    with torch.no_grad():
        camera, _ = datamanager.next_eval_image(0)
        image = model.get_outputs_for_camera(camera)["rgb"]
    assert image.shape == (16, 16, 3) and image.isfinite().all()
