"""Vector strokes as a score-distillation scene: N cubic Bezier strokes on a square canvas (DiffSketcher's
generator; ``render/strokes.py`` rasterizes them). It ignores the cameras: every camera sees the canvas, at the
camera's image size. Trains with the soft edge (gradients reach past a stroke's border); exports the SVG, the
box-filtered PNG that the SVG re-rendered matches, and the raw parameters for ``load``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import ParamGroup, Update
from gendistill.render.cameras import Cameras
from gendistill.render.strokes import Edge, Strokes, rasterize_strokes, strokes_to_svg

SVG_FILE, PNG_FILE, PARAMS_FILE = "sketch.svg", "sketch.png", "strokes.safetensors"
MIN_WIDTH = 0.25
"""Narrowest stroke drawn, in canvas pixels (a width the optimiser drives to zero would vanish for good)."""


@dataclass
class StrokeLearningRates:
    """Adam's rate per stroke field (DiffSketcher: points ~1 canvas pixel a step, widths and colours slower)."""

    points: float = 1.0
    widths: float = 0.1
    colours: float = 0.01


@dataclass
class StrokeSceneConfig:
    """N cubic Bezier strokes, drawn from random short segments, optimised per field."""

    KIND: ClassVar[str] = "strokes"
    FILES: ClassVar[tuple[str, ...]] = (SVG_FILE, PNG_FILE, PARAMS_FILE)

    num_strokes: int = 16
    """Strokes on the canvas."""
    canvas: int = 64
    """Side of the square canvas in pixels (the SVG's size)."""
    width: float = 1.5
    """Initial stroke width in canvas pixels."""
    segment: float = 0.1
    """Initial stroke length as a fraction of the canvas (its four points within this of its start)."""
    learn_colour: bool = False
    """False: black strokes (DiffSketcher's default); true: colours and opacities are learnt too."""
    init_colour: Literal["black", "random"] = "black"
    """Initial stroke colour: opaque black, or a random RGB and opacity in [0.5, 1] per stroke (DiffSketcher's
    start when colours are learnt)."""
    samples: int = 32
    """Points per curve in the rasterizer."""
    softness: float = 0.5
    """Edge softness of the training render, in pixels."""
    lr: StrokeLearningRates = field(default_factory=StrokeLearningRates)
    """Learning rates per field."""

    def check_installed(self) -> None:
        """Nothing beyond the base install (the rasterizer is plain torch)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "num_strokes"), self.num_strokes, 1)
        check_range(key_path(path, "canvas"), self.canvas, 8)
        check_range(key_path(path, "width"), self.width, MIN_WIDTH)
        check_range(key_path(path, "segment"), self.segment, 0.0, 1.0)
        check_range(key_path(path, "samples"), self.samples, 2)
        check_range(key_path(path, "softness"), self.softness, 1e-3)
        check_choice(key_path(path, "init_colour"), self.init_colour, ("black", "random"))

    def build(self, generator: torch.Generator, device: torch.device, total_steps: int = 0,
              start_map: Tensor | None = None) -> StrokeScene:
        """Random short strokes: each start uniform on the canvas, or, given ``start_map`` (a probability map
        (h, w) over the canvas, e.g. DiffSketcher's attention init), in distinct pixels drawn from it without
        replacement (uniform within the pixel); the other points within ``segment`` of the start."""
        n, size = self.num_strokes, float(self.canvas)
        start = (torch.rand(n, 1, 2, generator=generator) * size if start_map is None else
                 starts_from_map(start_map, n, self.canvas, generator))
        offsets = (torch.rand(n, 3, 2, generator=generator) - 0.5) * (self.segment * size)
        points = torch.cat([start, (start + offsets).clamp(0, size)], dim=1)
        colours = torch.tensor([0.0, 0.0, 0.0, 1.0]).repeat(n, 1)
        if self.init_colour == "random":
            colours = torch.cat([torch.rand(n, 3, generator=generator),
                                 0.5 + 0.5 * torch.rand(n, 1, generator=generator)], dim=1)
        strokes = Strokes(points, torch.full((n,), self.width), colours)
        return StrokeScene(strokes, self).to(device)

    def load(self, run_dir: Path) -> StrokeScene:
        """The strokes a run wrote to ``run_dir``."""
        from safetensors.torch import load_file

        path = Path(run_dir) / PARAMS_FILE
        if not path.is_file():
            raise UserError(f"{run_dir} has no {PARAMS_FILE}: not a strokes run folder")
        p = load_file(str(path))
        return StrokeScene(Strokes(p["points"], p["widths"], p["colours"]), self)


def starts_from_map(probabilities: Tensor, n: int, canvas: int, generator: torch.Generator) -> Tensor:
    """``n`` start points (n, 1, 2) in canvas pixels: distinct pixels of ``probabilities`` (h, w; resized to the
    canvas when its size differs, bilinear) drawn without replacement (with it when the canvas has fewer than
    ``n`` pixels), then uniform within each pixel. Where fewer than ``n`` pixels have mass, the rest are drawn
    almost uniformly."""
    p = probabilities.detach().float().cpu().clamp(min=0)
    if p.ndim != 2:
        raise ValueError(f"the start map must be (h, w), got {tuple(p.shape)}")
    if tuple(p.shape) != (canvas, canvas):
        p = F.interpolate(p[None, None], (canvas, canvas), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    flat = p.flatten()
    if flat.sum() <= 0:
        flat = torch.ones_like(flat)
    positive = int((flat > 0).sum())
    if positive < n:
        flat = flat + (flat.sum() / flat.numel()) * 1e-6
    index = torch.multinomial(flat, n, replacement=n > flat.numel(), generator=generator)
    pixel = torch.stack([index % canvas, index // canvas], dim=1).float()
    return (pixel + torch.rand(n, 2, generator=generator))[:, None]


@dataclass
class CanvasRender:
    """The canvas as every camera sees it (a 2D scene has no depth)."""

    rgb: Tensor
    """(C, 3, H, W) in [0, 1]."""
    alpha: Tensor
    """(C, 1, H, W), all ones: the canvas covers the image."""


class StrokeScene(nn.Module):
    """The strokes' fields as parameters; renders them for every camera (see the module docstring)."""

    kind = "strokes"

    def __init__(self, strokes: Strokes, config: StrokeSceneConfig):
        super().__init__()
        self.config = config
        self.points = nn.Parameter(strokes.points.clone())
        self.widths = nn.Parameter(strokes.widths.clone())
        self.colours = nn.Parameter(strokes.colours.clone(), requires_grad=config.learn_colour)

    def strokes(self, scale: float = 1.0) -> Strokes:
        """The drawable strokes (widths at least ``MIN_WIDTH``, colours in [0, 1]), coordinates times ``scale``."""
        return Strokes(self.points * scale, self.widths.clamp(min=MIN_WIDTH) * scale, self.colours.clamp(0, 1))

    def draw(self, height: int, width: int, edge: Edge) -> Tensor:
        """(3, height, width): the canvas scaled to the image."""
        scale = width / self.config.canvas
        return rasterize_strokes(self.strokes(scale), height, width, self.config.samples, edge,
                                 self.config.softness * scale)

    def render(self, cameras: Cameras, background: Tensor, generator: torch.Generator | None = None) -> CanvasRender:
        rgb = self.draw(cameras.height, cameras.width, "soft")
        count = len(cameras)
        return CanvasRender(rgb.expand(count, -1, -1, -1), torch.ones_like(rgb[:1]).expand(count, -1, -1, -1))

    @torch.no_grad()
    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        rgb = self.draw(cameras.height, cameras.width, "box")
        count = len(cameras)
        return rgb.expand(count, -1, -1, -1).clone(), torch.ones_like(rgb[:1]).expand(count, -1, -1, -1).clone()

    def parameter_groups(self) -> tuple[ParamGroup, ...]:
        lr = self.config.lr
        groups = [ParamGroup("points", [self.points], lr.points), ParamGroup("widths", [self.widths], lr.widths)]
        if self.config.learn_colour:
            groups.append(ParamGroup("colours", [self.colours], lr.colours))
        return tuple(groups)

    def modules(self) -> dict[str, nn.Module]:
        return {"strokes": self}

    def regularisation(self, render, step: int) -> Tensor | None:
        return None

    def before_backward(self, step: int, render, cameras: Cameras) -> None:
        pass

    def after_update(self, update: Update, render, cameras: Cameras) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def export(self, out_dir: Path) -> list[Path]:
        """``sketch.svg`` (the viewer's file), ``sketch.png`` (the same drawing, box-filtered) and the raw fields."""
        from safetensors.torch import save_file

        from gendistill.render.images import save_png

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        size = self.config.canvas
        svg = out_dir / SVG_FILE
        svg.write_text(strokes_to_svg(self.strokes(), size, size))
        png = save_png(self.draw(size, size, "box").cpu(), out_dir / PNG_FILE)
        params = out_dir / PARAMS_FILE
        save_file({"points": self.points.detach().cpu().contiguous(), "widths": self.widths.detach().cpu(),
                   "colours": self.colours.detach().cpu().contiguous()}, str(params))
        return [svg, Path(png), params]

    def summary(self) -> dict:
        return {"num_strokes": int(self.points.shape[0]), "canvas": self.config.canvas}

    def describe(self) -> str:
        return f"{self.points.shape[0]} strokes on a {self.config.canvas}-pixel canvas"
