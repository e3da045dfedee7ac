"""Analytic ray caster of the shapes world: exact hits, Lambertian shading, white background.

Shading: ``albedo * (AMBIENT + DIFFUSE * max(0, n . LIGHT_DIRECTION))`` under one directional light fixed in
the world (from the front-right-above, as the camera at azimuth 0 sees it), so front and back views of the
rotationally symmetric shapes still look different. Each pixel averages ``supersample x supersample``
rays on a regular sub-pixel grid (anti-aliasing); with ``supersample=1`` there is one ray through the
pixel centre ``(u + 0.5, v + 0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.domains.shapes.camera import Camera, stack_cameras
from gendistill.domains.shapes.intersect import INTERSECTORS
from gendistill.domains.shapes.scene import SHAPES, Scene

_LIGHT_AZIMUTH_DEG, _LIGHT_ELEVATION_DEG = 35.0, 55.0
LIGHT_DIRECTION: tuple[float, float, float] = (
    math.cos(math.radians(_LIGHT_ELEVATION_DEG)) * math.cos(math.radians(_LIGHT_AZIMUTH_DEG)),
    math.cos(math.radians(_LIGHT_ELEVATION_DEG)) * math.sin(math.radians(_LIGHT_AZIMUTH_DEG)),
    math.sin(math.radians(_LIGHT_ELEVATION_DEG)),
)
"""Unit vector from the object towards the light (world frame): azimuth 35 deg, elevation 55 deg."""
AMBIENT = 0.4
"""Fraction of the albedo that every lit or unlit surface shows."""
DIFFUSE = 0.6
"""Weight of the Lambertian term; AMBIENT + DIFFUSE = 1, so a surface facing the light shows its albedo."""
DEFAULT_SUPERSAMPLE = 2
"""Rays per pixel side: 2x2 anti-aliasing reads better at 64x64 than hard 1-ray edges."""
_CHUNK_RAYS = 1 << 19


@dataclass
class ShapeRender:
    """Renders of a batch of scenes; single renders (render()) drop the leading N."""

    rgb: Tensor
    """Colour in [0, 1] composited over white, (N, 3, H, W) float32."""
    alpha: Tensor
    """Coverage, (N, 1, H, W) float32: in {0, 1} with supersample=1, multiples of 1/s^2 otherwise."""
    depth: Tensor
    """Camera-frame z of the surface (OpenCV z, not ray length), (N, 1, H, W) float32; with supersampling
    the mean over the rays that hit (gsplat's "ED" mode). 0 on the background (alpha == 0)."""

    def __getitem__(self, i) -> ShapeRender:
        return ShapeRender(self.rgb[i], self.alpha[i], self.depth[i])


def camera_rays(viewmats: Tensor, Ks: Tensor, width: int, height: int,  # noqa: N803
                supersample: int = 1) -> tuple[Tensor, Tensor]:
    """World-frame rays of each camera: origins (N, 3) and directions (N, H*s, W*s, 3).

    A direction has camera-frame z = 1, so the ray parameter of a hit is its camera-frame depth. Sub-pixel
    sample (j, i) of the s-times finer grid sits at pixel coordinates ((j + 0.5) / s, (i + 0.5) / s).
    """
    s = supersample
    u = (torch.arange(width * s, dtype=torch.float32) + 0.5) / s
    v = (torch.arange(height * s, dtype=torch.float32) + 0.5) / s
    fx, fy = Ks[:, 0, 0].view(-1, 1, 1), Ks[:, 1, 1].view(-1, 1, 1)
    cx, cy = Ks[:, 0, 2].view(-1, 1, 1), Ks[:, 1, 2].view(-1, 1, 1)
    x = (u.view(1, 1, -1) - cx) / fx
    y = (v.view(1, -1, 1) - cy) / fy
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    # world direction = R^T (x, y, 1) = x * R[0] + y * R[1] + R[2] (rows of R are the camera axes)
    dirs = x.unsqueeze(-1) * R[:, None, None, 0] + y.unsqueeze(-1) * R[:, None, None, 1] + R[:, None, None, 2]
    origins = -torch.einsum("nji,nj->ni", R, t)
    return origins, dirs


def shading(normal: Tensor) -> Tensor:
    """Lambertian factor with ambient, ``AMBIENT + DIFFUSE * max(0, n . l)`` in [AMBIENT, 1]; (...,) for
    normals (..., 3). A surface's colour is its albedo times this factor."""
    lambert = (normal @ normal.new_tensor(LIGHT_DIRECTION)).clamp_min(0)
    return AMBIENT + DIFFUSE * lambert


def render(scene: Scene, camera: Camera, supersample: int = DEFAULT_SUPERSAMPLE) -> ShapeRender:
    """Render one scene: rgb (3, H, W), alpha (1, H, W), depth (1, H, W)."""
    return render_batch([scene], [camera], supersample=supersample)[0]


def render_batch(scenes: Sequence[Scene], cameras: Sequence[Camera],
                 supersample: int = DEFAULT_SUPERSAMPLE) -> ShapeRender:
    """Render scene i from camera i for every i; all cameras share one image size. Deterministic."""
    if len(scenes) != len(cameras):
        raise ValueError(f"got {len(scenes)} scenes but {len(cameras)} cameras")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    batch = stack_cameras(cameras)
    rays_per_image = batch.width * batch.height * supersample**2
    chunk = max(1, _CHUNK_RAYS // rays_per_image)
    parts = [_render_chunk(scenes[i:i + chunk], batch.viewmats[i:i + chunk], batch.Ks[i:i + chunk],
                           batch.width, batch.height, supersample)
             for i in range(0, len(scenes), chunk)]
    return ShapeRender(*(torch.cat(field) for field in zip(*[(p.rgb, p.alpha, p.depth) for p in parts])))


def _trace(scenes: Sequence[Scene], origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Hit depth (n, P) (inf on misses) and normals (n, P, 3) of each scene's rays, one call per shape."""
    n, P = dirs.shape[0], dirs.shape[1] * dirs.shape[2]
    t = torch.full((n, P), math.inf)
    normal = torch.zeros(n, P, 3)
    for shape in SHAPES:
        sel = torch.tensor([i for i, sc in enumerate(scenes) if sc.shape == shape], dtype=torch.long)
        if sel.numel() == 0:
            continue
        o = origins[sel].unsqueeze(1).expand(-1, P, 3).reshape(-1, 3)
        hit = INTERSECTORS[shape](o, dirs[sel].reshape(-1, 3))
        t[sel] = hit.t.view(-1, P)
        normal[sel] = hit.normal.view(-1, P, 3)
    return t, normal


def _render_chunk(scenes: Sequence[Scene], viewmats: Tensor, Ks: Tensor, width: int, height: int,  # noqa: N803
                  s: int) -> ShapeRender:
    origins, dirs = camera_rays(viewmats, Ks, width, height, s)
    t, normal = _trace(scenes, origins, dirs)
    n = len(scenes)
    hit = torch.isfinite(t).view(n, 1, height * s, width * s)
    albedo = torch.tensor([sc.albedo for sc in scenes], dtype=torch.float32).view(n, 3, 1, 1)
    colour = albedo * shading(normal).view(n, 1, height * s, width * s)  # channel-first: pools fast
    rgb = torch.where(hit, colour, torch.ones(()))
    depth = torch.where(hit, t.view(n, 1, height * s, width * s), torch.zeros(()))
    alpha = hit.float()
    if s > 1:
        rgb, alpha, depth = (F.avg_pool2d(x, s) for x in (rgb, alpha, depth))
        depth = depth / alpha.clamp_min(1.0 / s**2)  # mean depth over the rays that hit
    return ShapeRender(rgb, alpha, depth)
