"""Camera conventions: z-up world, front = +x, OpenCV camera axes and pixel centres as gsplat uses them."""

import math

import pytest
import torch

from gendistill.domains.shapes import (
    DISTANCE,
    Camera,
    Scene,
    orbit_cameras,
    render,
    sample_cameras,
    stack_cameras,
)
from gendistill.domains.shapes.intersect import CUBE_HALF_EDGE
from gendistill.errors import UserError


def _project(cam: Camera, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference pinhole projection: pixel coordinates (M, 2) and camera depth (M,) of world points."""
    homog = torch.cat([points, torch.ones(len(points), 1)], dim=1)
    p_cam = (cam.viewmat @ homog.T).T[:, :3]
    uvw = (cam.K @ p_cam.T).T
    return uvw[:, :2] / uvw[:, 2:], p_cam[:, 2]


@pytest.mark.parametrize("azimuth, elevation", [(0, 0), (37, 20), (200, -10), (310, 60)])
def test_viewmat_is_a_rigid_look_at_the_origin(azimuth, elevation):
    cam = Camera(azimuth, elevation)
    R = cam.viewmat[:3, :3].double()
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.det(R) == pytest.approx(1.0, abs=1e-6)
    origin_cam = cam.viewmat @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(origin_cam[:3], torch.tensor([0.0, 0.0, cam.distance]), atol=1e-5, rtol=0)
    torch.testing.assert_close(cam.camtoworld[:3, 3], cam.position, atol=1e-5, rtol=0)
    assert cam.position.norm().item() == pytest.approx(DISTANCE, abs=1e-5)
    assert cam.position[2].item() == pytest.approx(DISTANCE * math.sin(math.radians(elevation)), abs=1e-5)
    # world up never points down the image: camera y (down) has a non-positive world z component
    assert R[1, 2] <= 0


def test_front_camera_axes():
    """Azimuth 0 looks from +x: world +y is image right, world +z is image up."""
    cam = Camera(0, 0)
    torch.testing.assert_close(cam.position, torch.tensor([DISTANCE, 0.0, 0.0]))
    uv, _ = _project(cam, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]]))
    centre, right, up = uv
    torch.testing.assert_close(centre, torch.tensor([32.0, 32.0]))
    assert right[0] > 32 and right[1] == pytest.approx(32)
    assert up[1] < 32 and up[0] == pytest.approx(32)
    assert Camera(90, 0).position[1].item() == pytest.approx(DISTANCE)


def test_intrinsics_put_the_principal_point_at_the_image_centre():
    cam = Camera(0, 0, width=80, height=48, fov_deg=40)
    K = cam.K
    assert (K[0, 2].item(), K[1, 2].item()) == (40.0, 24.0)
    assert K[0, 0] == K[1, 1]
    # the vertical field of view spans the image height exactly
    assert 2 * math.degrees(math.atan(24.0 / K[1, 1].item())) == pytest.approx(40.0)


def test_render_agrees_with_the_reference_projection_of_cube_points():
    """Visible cube points projected with K @ viewmat land on covered pixels, whose depth is that of
    the point's face plane along the pixel-centre ray (centre at +0.5, as in gsplat)."""
    cam = Camera(30, 25)
    out = render(Scene("cube", "red"), cam, supersample=1)
    h = CUBE_HALF_EDGE
    grid = torch.linspace(-0.8 * h, 0.8 * h, 5)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    a, b, c = a.flatten(), b.flatten(), torch.full((25,), h)
    points = torch.cat([torch.stack([c, a, b], 1), torch.stack([a, c, b], 1), torch.stack([a, b, c], 1)])
    normals = torch.eye(3).repeat_interleave(25, dim=0)  # faces +x, +y, +z: all visible from (30, 25)
    uv, depth = _project(cam, points)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    assert (out.alpha[0, row, col] == 1).all()
    torch.testing.assert_close(out.depth[0, row, col], depth, atol=0.1, rtol=0)
    # exact: intersect each pixel-centre ray (z_cam = 1 scaled) with the point's face plane n.p = h
    pix = torch.stack([col + 0.5, row + 0.5, torch.ones_like(uv[:, 0])], 1)
    rays_cam = (torch.linalg.inv(cam.K) @ pix.T).T
    rays_world = rays_cam @ cam.viewmat[:3, :3]
    plane_depth = (h - normals @ cam.position) / (rays_world * normals).sum(1)
    torch.testing.assert_close(out.depth[0, row, col], plane_depth, atol=1e-4, rtol=0)
    # a hidden face's points are occluded: the render is nearer than them
    hidden = torch.stack([-c, a, b], 1)
    uv_h, depth_h = _project(cam, hidden)
    assert (out.depth[0, uv_h[:, 1].floor().long(), uv_h[:, 0].floor().long()] < depth_h - 0.3).all()


def test_gsplat_projection_agrees():
    """gsplat's own (pure torch) world->camera->pixel projection matches K @ viewmat."""
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    cams = [Camera(15, 10), Camera(140, 45), Camera(260, -5)]
    batch = stack_cameras(cams)
    points = torch.tensor([[0.3, -0.2, 0.5], [-0.5, 0.4, -0.1], [0.0, 0.0, 0.0]])
    covars = torch.eye(3).expand(3, 3, 3) * 1e-4
    means_c, covars_c = torch_impl._world_to_cam(points, covars, batch.viewmats)
    means2d, _ = torch_impl._persp_proj(means_c, covars_c, batch.Ks, 64, 64)
    for i, cam in enumerate(cams):
        uv, depth = _project(cam, points)
        torch.testing.assert_close(means2d[i], uv, atol=1e-4, rtol=0)
        torch.testing.assert_close(means_c[i, :, 2], depth, atol=1e-5, rtol=0)


def test_stack_cameras_and_positions():
    cams = orbit_cameras(6, elevation_deg=15)
    batch = stack_cameras(cams)
    assert batch.viewmats.shape == (6, 4, 4) and batch.Ks.shape == (6, 3, 3)
    torch.testing.assert_close(batch.positions, torch.stack([c.position for c in cams]), atol=1e-5, rtol=0)
    assert [c.azimuth_deg for c in cams] == [0, 60, 120, 180, 240, 300]
    with pytest.raises(ValueError):
        stack_cameras([Camera(0, 0), Camera(0, 0, width=32, height=32)])


def test_sample_cameras_is_seeded_and_in_range():
    a = sample_cameras(500, torch.Generator().manual_seed(3))
    b = sample_cameras(500, torch.Generator().manual_seed(3))
    assert a == b
    assert sample_cameras(20, torch.Generator().manual_seed(3)) == a[:20]
    az = torch.tensor([c.azimuth_deg for c in a])
    el = torch.tensor([c.elevation_deg for c in a])
    assert az.min() >= 0 and az.max() < 360 and az.max() - az.min() > 300
    assert el.min() >= -10 and el.max() <= 60 and el.max() - el.min() > 60


@pytest.mark.parametrize("kwargs", [dict(elevation_deg=90), dict(distance=0.5), dict(fov_deg=0.0)])
def test_camera_rejects_out_of_range_values(kwargs):
    args = dict(azimuth_deg=0.0, elevation_deg=0.0) | kwargs
    with pytest.raises(UserError):
        Camera(**args)
