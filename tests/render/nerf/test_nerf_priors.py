"""Training aids of the NeRF scene: TensoRF's total variation in closed form, coarse-to-fine renders."""

import pytest
import torch

pytest.importorskip("nerfstudio")

from gendistill.render.nerf import FieldConfig, build_field, render_cameras  # noqa: E402
from gendistill.render.nerf.coarse import coarse_cameras, upsample_render  # noqa: E402
from gendistill.render.nerf.priors import grid_total_variation, tensorf_total_variation  # noqa: E402
from gendistill.render.rig import orbit  # noqa: E402

pytestmark = pytest.mark.nerf


def test_total_variation_of_a_linear_ramp_plane_is_the_sum_of_its_squared_slopes():
    i = torch.arange(5.0).view(5, 1)
    j = torch.arange(4.0).view(1, 4)
    plane = (0.3 * i - 2.0 * j + 1.0).expand(1, 1, 5, 4)
    assert grid_total_variation(plane).item() == pytest.approx(0.3 ** 2 + 2.0 ** 2)
    assert grid_total_variation(torch.full((2, 3, 6, 6), 4.0)).item() == 0.0


def test_total_variation_of_a_line_counts_only_its_length():
    line = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 1, 4, 1)  # differences +-1: mean square 1
    assert grid_total_variation(line).item() == pytest.approx(1.0)


def test_tensorf_total_variation_sums_planes_and_lines_and_skips_other_encoders():
    field = build_field(FieldConfig(architecture="tensorf-vm"), seed=0)
    enc = field.encoder
    expected = grid_total_variation(enc.plane_coef) + grid_total_variation(enc.line_coef)
    tv = tensorf_total_variation(enc)
    assert torch.allclose(tv, expected)
    tv.backward()
    assert enc.plane_coef.grad.abs().sum() > 0
    assert tensorf_total_variation(build_field(FieldConfig(architecture="hashgrid"), seed=0).encoder) is None


def test_coarse_cameras_see_the_same_picture_at_a_lower_resolution():
    cameras = orbit(2, width=16, height=16)
    small = coarse_cameras(cameras, 0.5)
    assert (small.width, small.height) == (8, 8)
    field = build_field(FieldConfig(architecture="tensorf-vm", bound=1.2), seed=0)
    with torch.no_grad():
        full_rgb, full_alpha = render_cameras(field, cameras, 32, background=torch.ones(3))
        rgb, alpha = render_cameras(field, small, 32, background=torch.ones(3))
    # each coarse pixel sees what the 2x2 fine pixels around its centre see, on average
    pooled = torch.nn.functional.avg_pool2d(full_rgb, 2)
    assert (rgb - pooled).abs().mean() < 0.02
    up_rgb, up_alpha = upsample_render(rgb, alpha, 16, 16)
    assert up_rgb.shape == full_rgb.shape and up_alpha.shape == full_alpha.shape
