"""Bezier strokes: the rasterizer's coverage closed form, its gradients, and the SVG that an independent
renderer (cairosvg) draws the same."""

import io
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from gendistill.render.strokes import Strokes, rasterize_strokes, strokes_to_svg


def random_strokes(n, size=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    colours = torch.cat([torch.rand(n, 3, generator=g), 0.5 + 0.5 * torch.rand(n, 1, generator=g)], dim=1)
    return Strokes((torch.rand(n, 4, 2, generator=g) * size).to(dtype), (1 + 3 * torch.rand(n, generator=g)).to(dtype),
                   colours.to(dtype))


def test_a_straight_stroke_covers_pixels_by_the_box_filter_closed_form():
    """A black horizontal stroke of width 3 centred on y = 10 (a pixel boundary): rows whose centres are 0.5
    away are covered, rows 1.5 away half covered, others not at all."""
    line = torch.tensor([[[-20.0, 10.0], [0.0, 10.0], [40.0, 10.0], [60.0, 10.0]]])
    image = rasterize_strokes(Strokes(line, torch.tensor([3.0]), torch.tensor([[0.0, 0.0, 0.0, 1.0]])), 20, 40)
    column = image[0, :, 20]
    expected = torch.ones(20)
    expected[[8, 11]], expected[[9, 10]] = 0.5, 0.0
    assert torch.allclose(column, expected, atol=1e-6) and torch.allclose(image[1], image[0])


def test_later_strokes_are_painted_over_earlier_ones_with_their_opacity():
    line = torch.tensor([[[0.0, 5.0], [3.0, 5.0], [7.0, 5.0], [10.0, 5.0]]]).repeat(2, 1, 1)
    colours = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.5]])
    pixel = rasterize_strokes(Strokes(line, torch.tensor([4.0, 4.0]), colours), 10, 10)[:, 5, 5]
    assert torch.allclose(pixel, torch.tensor([0.5, 0.0, 0.5]), atol=1e-6)  # red, then half-opaque blue over it


@pytest.mark.parametrize("edge", ["box", "soft"])
def test_every_stroke_field_gets_a_gradient(edge):
    strokes = random_strokes(4, size=32)
    for tensor in (strokes.points, strokes.widths, strokes.colours):
        tensor.requires_grad_(True)
    rasterize_strokes(strokes, 32, 32, edge=edge).mean().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (strokes.points, strokes.widths,
                                                                        strokes.colours))


def test_control_point_gradients_match_finite_differences():
    strokes = random_strokes(2, size=16, seed=3, dtype=torch.float64)

    def render(points):
        return rasterize_strokes(Strokes(points, strokes.widths, strokes.colours), 16, 16, edge="soft").sum()

    assert torch.autograd.gradcheck(render, (strokes.points.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_the_svg_is_valid_and_cairosvg_draws_what_the_rasterizer_draws():
    cairosvg = pytest.importorskip("cairosvg")
    strokes = random_strokes(16)
    svg = strokes_to_svg(strokes, 64, 64)
    root = ET.fromstring(svg.split("\n", 1)[1])
    assert root.get("version") == "1.1" and len(root.findall("{http://www.w3.org/2000/svg}path")) == 16
    png = cairosvg.svg2png(bytestring=svg.encode())
    reference = torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))).permute(2, 0, 1) / 255
    mse = (rasterize_strokes(strokes, 64, 64) - reference).pow(2).mean().item()
    assert 10 * math.log10(1 / mse) >= 35  # measured 40.7 dB for these strokes
