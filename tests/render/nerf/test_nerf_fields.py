"""Radiance fields: every architecture fits a tiny shapes scene; density is non-negative and 0 outside the cube."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.errors import UserError  # noqa: E402
from gendistill.render.nerf import ARCHITECTURES, FieldConfig, build_field, render_cameras, render_rays  # noqa: E402
from gendistill.render.nerf.volume import camera_rays  # noqa: E402
from scene_fixtures import WHITE, psnr, tiny_scene  # noqa: E402

pytestmark = pytest.mark.nerf


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_fits_a_tiny_scene(architecture):
    cameras, images = tiny_scene()
    field = build_field(FieldConfig(architecture=architecture), seed=0)
    origins, directions = (r.reshape(-1, 3) for r in camera_rays(cameras))
    target = images.permute(0, 2, 3, 1).reshape(-1, 3)
    with torch.no_grad():
        before = psnr(render_cameras(field, cameras, 32, background=WHITE)[0], images)
    optimizer = torch.optim.Adam(field.parameter_groups())
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        rays = torch.randint(0, origins.shape[0], (256,), generator=generator)
        out = render_rays(field, origins[rays], directions[rays], 32, generator=generator, background=WHITE)
        loss = (out.rgb - target[rays]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = psnr(render_cameras(field, cameras, 32, background=WHITE)[0], images)
    assert after > before + 8.0, (before, after)
    assert after > 17.0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_shapes_and_ranges(architecture):
    field = build_field(FieldConfig(architecture=architecture, bound=1.0), seed=0)
    x = torch.cat([torch.rand(64, 3) * 2 - 1, torch.tensor([[1.5, 0.0, 0.0], [0.0, -1.2, 0.3]])])
    density, rgb = field(x)
    assert density.shape == (66,) and rgb.shape == (66, 3)
    assert (density >= 0).all() and (rgb >= 0).all() and (rgb <= 1).all()
    assert (density[-2:] == 0).all() and (density[:-2] > 0).all()
    assert field.features(x).shape == (66, field.feature_dim)
    assert torch.equal(field.density(x), density)


def test_seeded_build_is_reproducible_and_keeps_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = build_field(FieldConfig(architecture="tensorf-vm"), seed=7)
    assert torch.equal(torch.rand(1), expected)
    b = build_field(FieldConfig(architecture="tensorf-vm"), seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_view_dependent_field_uses_directions():
    field = build_field(FieldConfig(architecture="mlp", view_dependent=True), seed=0)
    x = torch.zeros(2, 3)
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    _, rgb = field(x, d)
    assert not torch.allclose(rgb[0], rgb[1])
    assert field(x)[1].shape == (2, 3)


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture 'nope'; choose one of: hashgrid, mlp"):
        FieldConfig(architecture="nope")
    config = FieldConfig()
    config.architecture = "voxels"
    with pytest.raises(UserError, match="tensorf-cp, tensorf-vm"):
        build_field(config)
