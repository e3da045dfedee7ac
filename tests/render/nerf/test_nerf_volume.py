"""Volume rendering: rays through pixel centres, cube clipping, empty fields, chunked differentiable renders."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.domains.shapes import camera_rays as shapes_camera_rays  # noqa: E402
from gendistill.render.nerf import (  # noqa: E402
    FieldConfig, build_field, camera_rays, intersect_cube, render_cameras, render_rays,
)
from gendistill.render.nerf.volume import composite, importance_bins, stratified_bins  # noqa: E402
from gendistill.render.rig import orbit  # noqa: E402

pytestmark = pytest.mark.nerf


def test_rays_pass_through_pixel_centres():
    cameras = orbit(3, elevation_deg=35.0, distance=3.0, fov_deg=50.0, width=7, height=5)
    origins, directions = camera_rays(cameras)
    assert origins.shape == directions.shape == (3, 5, 7, 3)
    for t in (0.5, 2.0):
        points = origins + t * directions
        homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)
        camera_frame = torch.einsum("cij,chwj->chwi", cameras.viewmats, homogeneous)[..., :3]
        assert torch.allclose(camera_frame[..., 2], torch.full_like(camera_frame[..., 2], t), atol=1e-5)
        pixels = torch.einsum("cij,chwj->chwi", cameras.Ks, camera_frame)
        pixels = pixels[..., :2] / pixels[..., 2:]
        v, u = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
        expected = torch.stack([u + 0.5, v + 0.5], -1).expand(3, 5, 7, 2)
        assert torch.allclose(pixels, expected, atol=1e-4)
    # the shapes world's ray caster uses the same convention
    _, shapes_dirs = shapes_camera_rays(cameras.viewmats, cameras.Ks, 7, 5)
    assert torch.allclose(directions, shapes_dirs, atol=1e-6)


def test_cube_intersection():
    origins = torch.tensor([[-5.0, 0.0, 0.0], [-5.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    directions = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    near, far = intersect_cube(origins, directions, 1.0)
    assert torch.allclose(near[[0, 2]], torch.tensor([2.0, 0.0])) and torch.allclose(far[[0, 2]], torch.tensor([3.0, 1.0]))
    assert near[1] == far[1]  # a miss has an empty interval


def _empty_field():
    field = build_field(FieldConfig(architecture="tensorf-cp"), seed=0)
    last = field.density_head.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = -40.0
    return field


def test_empty_field_renders_background():
    field = _empty_field()
    background = torch.tensor([0.2, 0.5, 0.9])
    rgb, alpha = render_cameras(field, orbit(2, width=8, height=8), 16, background=background)
    assert alpha.abs().max() < 1e-6
    assert torch.allclose(rgb, background.view(1, 3, 1, 1).expand_as(rgb), atol=1e-6)
    black, _ = render_cameras(field, orbit(1, width=4, height=4), 8)
    assert black.abs().max() < 1e-6


def test_rays_missing_the_cube_are_transparent():
    field = build_field(FieldConfig(architecture="tensorf-vm", bound=1.0), seed=0)
    out = render_rays(field, torch.tensor([[-5.0, 3.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), 16,
                      background=torch.ones(3))
    assert out.alpha.item() == 0.0 and torch.allclose(out.rgb, torch.ones(1, 3))


def test_composite_matches_closed_form_for_constant_density():
    density = torch.full((1, 10), 0.7)
    deltas = torch.full((1, 10), 0.2)
    weights, rgb = composite(density, torch.full((1, 10, 3), 0.25), deltas)
    expected_alpha = 1 - torch.exp(torch.tensor(-0.7 * 2.0))
    assert torch.allclose(weights.sum(), expected_alpha, atol=1e-5)
    assert torch.allclose(rgb, 0.25 * expected_alpha.expand(1, 3), atol=1e-5)


def test_importance_bins_concentrate_where_weights_are():
    edges = stratified_bins(torch.zeros(1), torch.ones(1), 10)
    weights = torch.zeros(1, 10)
    weights[0, 7] = 1.0
    new = importance_bins(edges, weights, 20)
    assert new.shape == (1, 31) and (new[0, 1:] >= new[0, :-1]).all()
    added = new[0][(new[0] > 0.7) & (new[0] < 0.8)]
    assert added.numel() >= 20


def test_chunked_render_matches_unchunked_and_has_gradients():
    field = build_field(FieldConfig(architecture="hashgrid"), seed=0)
    cameras = orbit(2, width=6, height=5)
    rgb_a, alpha_a = render_cameras(field, cameras, 16, background=torch.ones(3), chunk=7)
    rgb_b, alpha_b = render_cameras(field, cameras, 16, background=torch.ones(3), chunk=10_000)
    assert torch.allclose(rgb_a, rgb_b, atol=1e-6) and torch.allclose(alpha_a, alpha_b, atol=1e-6)
    rgb_a.sum().backward()
    assert field.encoder.hash_table.grad.abs().sum() > 0
    with torch.no_grad():
        again, _ = render_cameras(field, cameras, 16, background=torch.ones(3), chunk=7, num_importance=8)
    assert again.shape == (2, 3, 5, 6)


def test_importance_sampling_sharpens_a_thin_surface():
    field = build_field(FieldConfig(architecture="mlp"), seed=0)
    out = render_rays(field, torch.tensor([[-3.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), 8,
                      num_importance=16)
    assert out.t.shape == (1, 24) and out.weights.shape == (1, 24) and out.positions.shape == (1, 24, 3)
