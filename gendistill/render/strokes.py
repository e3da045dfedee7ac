"""Cubic Bezier strokes: a differentiable pure-PyTorch rasterizer and an SVG 1.1 writer that agree.

DiffSketcher (Xing et al. 2023, "DiffSketcher: Text Guided Vector Sketch Synthesis through Latent Diffusion
Models", arXiv 2306.14685; code: ximinng/DiffSketcher) optimises the control points, widths and colours of Bezier
strokes through a differentiable vector rasterizer (diffvg there, a compiled extension). Here, without one: each
stroke is sampled into a polyline, every pixel centre's distance ``d`` to it is exact, and its coverage is

- ``edge="box"``: ``clamp(w / 2 - d + 1/2, 0, 1)``, the area of a one-pixel box filter over a straight edge
  (what anti-aliasing renderers such as cairo compute, so the SVG re-rendered agrees with the raster), or
- ``edge="soft"``: ``sigmoid((w / 2 - d) / softness)``, which has gradients beyond the stroke's edge (for
  optimisation: a stroke far from where the loss wants it still feels the pull).

Strokes are composited in order over a white canvas, ``c <- c (1 - a) + colour a`` with ``a = coverage * alpha``,
as SVG paints later paths over earlier ones; round caps and joins, as ``strokes_to_svg`` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Edge = Literal["box", "soft"]


@dataclass
class Strokes:
    """N cubic Bezier strokes in pixel coordinates (x right, y down, origin at the canvas' top-left corner)."""

    points: Tensor
    """Control points, (N, 4, 2): start, two handles, end."""
    widths: Tensor
    """Stroke widths in pixels, (N,)."""
    colours: Tensor
    """RGBA in [0, 1], (N, 4)."""

    def __len__(self) -> int:
        return self.points.shape[0]

    def polylines(self, samples: int) -> Tensor:
        """Each curve at ``samples`` evenly spaced parameters, (N, samples, 2)."""
        t = torch.linspace(0, 1, samples, dtype=self.points.dtype, device=self.points.device)[None, :, None]
        p0, p1, p2, p3 = (self.points[:, None, i] for i in range(4))
        s = 1 - t
        return s**3 * p0 + 3 * s**2 * t * p1 + 3 * s * t**2 * p2 + t**3 * p3


def rasterize_strokes(strokes: Strokes, height: int, width: int, samples: int = 32, edge: Edge = "box",
                      softness: float = 0.5) -> Tensor:
    """The strokes painted over white, (3, height, width) in [0, 1], differentiable in every stroke field."""
    canvas = torch.ones(3, height, width, dtype=strokes.points.dtype, device=strokes.points.device)
    if len(strokes) == 0:
        return canvas
    distance = _distance_to_polylines(strokes.polylines(samples), height, width)  # (N, H, W)
    half = strokes.widths[:, None, None] / 2
    coverage = ((half - distance + 0.5).clamp(0, 1) if edge == "box" else
                torch.sigmoid((half - distance) / softness))
    alpha = coverage * strokes.colours[:, 3, None, None]
    for i in range(len(strokes)):
        a = alpha[i][None]
        canvas = canvas * (1 - a) + strokes.colours[i, :3, None, None] * a
    return canvas


def _distance_to_polylines(lines: Tensor, height: int, width: int) -> Tensor:
    """Distance from every pixel centre to each polyline, (N, H, W)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=lines.dtype, device=lines.device) + 0.5,
                            torch.arange(width, dtype=lines.dtype, device=lines.device) + 0.5, indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).reshape(1, -1, 1, 2)  # (1, P, 1, 2)
    a, b = lines[:, None, :-1], lines[:, None, 1:]  # (N, 1, S, 2)
    ab = b - a
    t = (((pixels - a) * ab).sum(-1) / ab.pow(2).sum(-1).clamp(min=1e-12)).clamp(0, 1)
    nearest = a + t[..., None] * ab
    d2 = (pixels - nearest).pow(2).sum(-1).amin(dim=-1)  # (N, P)
    return (d2 + 1e-12).sqrt().view(-1, height, width)


def strokes_to_svg(strokes: Strokes, height: int, width: int) -> str:
    """An SVG 1.1 document of the strokes over a white background, drawn as ``rasterize_strokes`` draws them."""
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    for points, w, colour in zip(strokes.points.tolist(), strokes.widths.tolist(), strokes.colours.tolist()):
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
        r, g, b = (round(255 * min(max(c, 0.0), 1.0)) for c in colour[:3])
        lines.append(f'<path d="M {x0:.3f} {y0:.3f} C {x1:.3f} {y1:.3f}, {x2:.3f} {y2:.3f}, {x3:.3f} {y3:.3f}" '
                     f'fill="none" stroke="rgb({r},{g},{b})" stroke-opacity="{min(max(colour[3], 0.0), 1.0):.4f}" '
                     f'stroke-width="{max(w, 0.0):.3f}" stroke-linecap="round" stroke-linejoin="round"/>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"
