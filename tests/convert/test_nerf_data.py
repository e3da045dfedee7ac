"""Multi-view data: shapes views and the transforms.json layout (OpenGL camera-to-world -> OpenCV viewmats)."""

import json
import math

import pytest
import torch

from gendistill.convert.data import (
    load_transforms, opengl_c2w_to_viewmat, shapes_views, sphere_cameras, viewmat_to_opengl_c2w, write_transforms,
)
from gendistill.errors import UserError


def test_shapes_views_match_sphere_cameras():
    data = shapes_views("a blue sphere", 3, torch.Generator().manual_seed(4), size=16)
    cameras = sphere_cameras(3, torch.Generator().manual_seed(4), size=16)
    assert data.images.shape == (3, 3, 16, 16)
    assert torch.allclose(data.cameras.viewmats, cameras.viewmats, atol=1e-6)
    assert torch.allclose(cameras.positions.norm(dim=-1), torch.full((3,), 4.0), atol=1e-5)
    assert (data.images[:, :, 0, 0] == 1).all()  # the corner shows the white background


def test_opengl_conversion_of_a_known_camera():
    # an OpenGL camera at +z*3 looking down -z (its default) with y up: OpenCV looks along +z with y down
    c2w = torch.eye(4)
    c2w[2, 3] = 3.0
    viewmat = opengl_c2w_to_viewmat(c2w)
    point = torch.tensor([0.0, 1.0, 0.0, 1.0])  # above the origin, in front of the camera
    p = viewmat @ point
    assert torch.allclose(p[:3], torch.tensor([0.0, -1.0, 3.0]))  # y down, 3 units ahead
    assert torch.allclose(viewmat_to_opengl_c2w(viewmat), c2w, atol=1e-6)


def test_transforms_round_trip(tmp_path):
    data = shapes_views("a green torus", 4, torch.Generator().manual_seed(0), size=12)
    write_transforms(data, tmp_path)
    loaded = load_transforms(tmp_path)
    assert torch.allclose(loaded.cameras.viewmats, data.cameras.viewmats, atol=1e-5)
    assert torch.allclose(loaded.cameras.Ks, data.cameras.Ks, atol=1e-5)
    assert (loaded.images - data.images).abs().max() <= 0.5 / 255 + 1e-6


def test_camera_angle_x_and_rgba_compositing(tmp_path):
    from PIL import Image

    rgba = torch.zeros(8, 10, 4, dtype=torch.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba.numpy()).save(tmp_path / "r_0.png")
    meta = {"camera_angle_x": 2 * math.atan(0.5), "frames": [{"file_path": "./r_0", "transform_matrix": torch.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    data = load_transforms(tmp_path, background=torch.tensor([0.0, 0.0, 1.0]))
    assert data.cameras.Ks[0, 0, 0].item() == pytest.approx(10.0) and data.cameras.Ks[0, 1, 2].item() == 4.0
    assert torch.allclose(data.images[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(data.images[0, :, -1, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no transforms.json"):
        load_transforms(tmp_path)
    (tmp_path / "transforms.json").write_text('{"frames": [{"file_path": "x.png", "transform_matrix": []}]}')
    with pytest.raises(UserError, match="does not exist"):
        load_transforms(tmp_path)
