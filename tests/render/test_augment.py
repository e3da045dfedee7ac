"""Augmented score distillation's transforms: exact homographies, identity at zero strength, white outside the
image, seeded draws, gradients to the image."""

import pytest
import torch

from gendistill.render.augment import AugmentConfig, augment, homography, perspective_grid

SQUARE = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def images(seed=0):
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_homography_maps_each_corner_exactly():
    g = torch.Generator().manual_seed(0)
    target = SQUARE + 0.3 * (torch.rand(3, 4, 2, generator=g) - 0.5)
    h = homography(SQUARE.expand(3, -1, -1).double(), target.double())
    mapped = torch.cat([SQUARE.double(), torch.ones(4, 1, dtype=torch.float64)], 1) @ h.transpose(1, 2)
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], target.double(), atol=1e-10)


def test_zero_strength_is_the_identity():
    none = AugmentConfig(distortion=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    x = images()
    assert torch.allclose(augment(x, none, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_a_perspective_warp_leaves_white_where_the_image_no_longer_reaches():
    corners = SQUARE * 0.5  # the image shrunk to the central half
    grid = perspective_grid(corners[None], 16, 16)
    x = torch.zeros(1, 3, 16, 16)
    out = torch.nn.functional.grid_sample(x - 1, grid, align_corners=False, padding_mode="zeros") + 1
    assert out[0, :, 0, 0].eq(1).all() and out[0, :, 8, 8].eq(0).all()


def test_draws_are_seeded_and_gradients_reach_the_image():
    config = AugmentConfig()
    x = images().requires_grad_(True)
    a = augment(x, config, torch.Generator().manual_seed(1))
    b = augment(x, config, torch.Generator().manual_seed(1))
    c = augment(x, config, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c) and a.shape == x.shape
    a.mean().backward()
    assert x.grad.abs().sum() > 0


def test_bad_settings_name_the_key():
    from gendistill.errors import UserError

    with pytest.raises(UserError, match="augment.distortion"):
        AugmentConfig(distortion=1.5).check("augment")
