"""The strokes scene: renders the canvas for every camera, trains through the soft edge, and exports an SVG,
its PNG and the fields that ``load`` reads back."""

import xml.etree.ElementTree as ET

import pytest
import torch

from gendistill.render.rig import orbit
from gendistill.render.scenes.strokes import StrokeSceneConfig
from gendistill.errors import UserError


def scene(**overrides):
    return StrokeSceneConfig(**{"num_strokes": 6, "canvas": 32, **overrides}).build(torch.Generator().manual_seed(0),
                                                                                      torch.device("cpu"))


def test_every_camera_sees_the_canvas_at_its_size_and_points_get_gradients():
    strokes = scene()
    cameras = orbit(3, width=64, height=64)
    render = strokes.render(cameras, torch.ones(3))
    assert render.rgb.shape == (3, 3, 64, 64) and torch.equal(render.rgb[0], render.rgb[2])
    assert render.rgb.min() < 0.5 and (render.alpha == 1).all()  # black strokes on white
    (1 - render.rgb).mean().backward()
    assert strokes.points.grad.abs().sum() > 0 and strokes.widths.grad.abs().sum() > 0
    assert [g.name for g in strokes.parameter_groups()] == ["points", "widths"]  # black: colours fixed
    assert [g.name for g in scene(learn_colour=True).parameter_groups()] == ["points", "widths", "colours"]


def test_strokes_start_short_and_on_the_canvas():
    points = scene(num_strokes=50, segment=0.1).points.detach()
    assert points.min() >= 0 and points.max() <= 32
    assert (points - points[:, :1]).abs().max() <= 0.05 * 32 + 1e-6


def test_export_and_load_round_trip(tmp_path):
    strokes = scene()
    files = strokes.export(tmp_path)
    assert [f.name for f in files] == ["sketch.svg", "sketch.png", "strokes.safetensors"]
    root = ET.fromstring(files[0].read_text().split("\n", 1)[1])
    assert root.get("width") == "32" and len(root.findall("{http://www.w3.org/2000/svg}path")) == 6
    loaded = StrokeSceneConfig(num_strokes=6, canvas=32).load(tmp_path)
    cameras = orbit(1, width=32, height=32)
    assert torch.equal(loaded.render_views(cameras, torch.ones(3))[0], strokes.render_views(cameras, torch.ones(3))[0])
    with pytest.raises(UserError, match="not a strokes run folder"):
        StrokeSceneConfig().load(tmp_path / "elsewhere")
