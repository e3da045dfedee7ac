"""Depth renders as grey images, and the depth data of a depth-branch teacher."""

import torch

from gendistill.domains.shapes import make_batch
from gendistill.domains.shapes.depth import FAR_GREY, depth_image, image_depth


def test_depth_image_is_grey_white_outside_and_inverts_inside():
    batch = make_batch(6, torch.Generator().manual_seed(0), size=32, supersample=1)
    image = depth_image(batch.depth, batch.alpha)
    assert image.shape == (6, 3, 32, 32)
    assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    inside, outside = batch.alpha[:, 0] > 0.5, batch.alpha[:, 0] < 0.5
    assert torch.all(image[:, 0][outside] == 1) and image[:, 0][inside].max() <= FAR_GREY
    back = image_depth(image)[:, 0][inside]
    assert torch.allclose(back, batch.depth[:, 0][inside], atol=1e-5)


def test_the_nearer_surface_is_darker():
    depth = torch.tensor([3.2, 3.8, 4.6]).view(3, 1, 1, 1)
    grey = depth_image(depth, torch.ones_like(depth))[:, 0, 0, 0]
    assert grey[0] < grey[1] < grey[2] < 1
