"""A copy of a run's Gaussian splats framed for gradio's splat viewer.

gradio's Model3D shows a 3DGS PLY with gsplat.js, and passes it neither ``camera_position`` nor
``clear_color``: its camera orbits the origin at distance 5 with a fixed focal length of 1132 px, in
OpenCV axes (y down). The text-to-3D world is z up with the object in the unit ball, so shown as is the
object lies on its side and fills the view. The viewer copy therefore moves the splats into the viewer's
frame: centred, rotated so that world z is the viewer's up and the object's front (+x) faces the starting
camera, and scaled so the object spans about half of a :data:`VIEWER_HEIGHT_PX` tall view. Only the
downloads hold the run's own ``scene.ply``; the copy is for looking at.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gendistill.render.gaussians import GaussianParams
from gendistill.render.ply import load_ply, save_ply

GSPLAT_JS_DISTANCE = 5.0
"""gsplat.js's orbit camera starts this far from the origin."""
GSPLAT_JS_FOCAL_PX = 1132.0
"""gsplat.js's camera focal length, in pixels, whatever the canvas size."""
VIEWER_HEIGHT_PX = 380
"""Height of the page's 3D view (the Model3D's ``height``)."""
FILL = 0.45
"""Fraction of the view's height the object's diameter spans."""
WORLD_TO_VIEWER = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
"""Rotation from the z-up world to gsplat.js's axes: z -> -y (up), +x (the front) -> -z (towards the
starting camera, which sits at azimuth ~29 deg and elevation ~29 deg in world terms), y -> x."""


def target_radius(view_height_px: float = VIEWER_HEIGHT_PX, fill: float = FILL) -> float:
    """The object radius (viewer units) whose image spans ``fill`` of a ``view_height_px`` tall view."""
    return fill * view_height_px / 2 * GSPLAT_JS_DISTANCE / GSPLAT_JS_FOCAL_PX


def rotation_to_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """The unit quaternion (w, x, y, z) of a proper 3x3 rotation matrix (Shepperd's method)."""
    r = rotation.double()
    trace = r.trace()
    if trace > 0:
        s = 2 * math.sqrt(1 + trace)
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(torch.argmax(torch.diagonal(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(1 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0] * 4
        q[0], q[1 + i] = (r[k, j] - r[j, k]) / s, s / 4
        q[1 + j], q[1 + k] = (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s
    return torch.tensor([float(v) for v in q], dtype=rotation.dtype)


def quaternion_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of (..., 4) wxyz quaternions (rotate by b, then by a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def object_centre_and_radius(params: GaussianParams, min_opacity: float = 0.1) -> tuple[torch.Tensor, float]:
    """Opacity-weighted centre of the visible Gaussians and the 95th percentile of their distance to it
    (a few stray floaters do not shrink the object)."""
    with torch.no_grad():
        opacity = torch.sigmoid(params.opacity_logits)
        visible = opacity > min_opacity
        if not visible.any():
            visible = torch.ones_like(visible)
        means, weights = params.means[visible], opacity[visible]
        centre = (means * weights[:, None]).sum(0) / weights.sum()
        radius = torch.quantile((means - centre).norm(dim=1), 0.95).item() if len(means) > 1 else 1.0
    return centre, max(radius, 1e-3)


def framed_for_viewer(params: GaussianParams) -> GaussianParams:
    """The splats centred, rotated into gsplat.js's axes and scaled to :func:`target_radius` (colours,
    opacities and shapes unchanged; higher SH coefficients are kept as they are, gsplat.js shows only the
    base colour)."""
    centre, radius = object_centre_and_radius(params)
    scale = target_radius() / radius
    rotation = WORLD_TO_VIEWER.to(params.means.dtype)
    with torch.no_grad():
        means = (params.means - centre) @ rotation.T * scale
        quats = quaternion_product(rotation_to_quaternion(rotation).expand_as(params.quats), params.quats)
        return GaussianParams(means, params.log_scales + math.log(scale), quats, params.opacity_logits,
                              params.sh0, params.shN)


def write_viewer_copy(scene_ply: str | Path, out: str | Path) -> Path:
    """Write the framed copy of the 3DGS file ``scene_ply`` to ``out``; returns ``out``."""
    return save_ply(framed_for_viewer(load_ply(scene_ply)), out)
