"""A pure-PyTorch 3D Gaussian splatting rasterizer that gives gsplat's images and gradients on any device.

It follows ``gsplat.rasterization`` (gsplat 1.5, ``packed=False``, ``rasterize_mode="classic"``, pinhole
cameras) step by step and lets autograd do the backward pass:

1. world to camera, EWA projection of the covariances with the Jacobian's view-frustum clamp (1.3 x the
   field of view), ``eps2d`` added to the 2D covariance's diagonal (no compensation);
2. culling like gsplat's CUDA projection: depth outside ``(near_plane, far_plane)``, a non-positive
   determinant, opacity below 1/255, radius at most ``radius_clip``, or a bounding box off the image give
   radius 0; the radius is ``ceil(min(3.33, sqrt(2 log(opacity * 255))) * sqrt(covariance diagonal))``;
3. spherical harmonics of degree 0-3 to colour: ``max(0, SH(dir) + 0.5)``, dir from the camera centre to the
   mean (gsplat's constants and sign convention);
4. per-pixel front-to-back compositing in depth order with gsplat's rules: ``alpha = min(0.999,
   opacity * exp(-sigma))``, skip ``alpha < 1/255`` (and ``sigma < 0``), stop before the Gaussian that would
   take the transmittance to ``<= 1e-4``; colour plus transmittance times background; expected depth
   ``sum(w z) / max(alpha, 1e-10)``.

There are no tiles: each Gaussian is paired with the pixel centres inside its bounding box where its alpha
reaches 1/255, the pairs are sorted by (pixel, depth), laid out as one padded row per pixel, and composited
with a cumulative product along the rows; there is no Python loop over pixels. Every pixel a tile-based
rasterizer blends lies inside the box, so the result is the same. Gaussians go through this in depth-ordered
chunks of about ``CHUNK_HITS`` pairs; a chunk skips pixels that earlier ones finished (transmittance
reached 1e-4), which bounds memory and saves most of the work behind opaque surfaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
"""Alphas below this are skipped (gsplat's ALPHA_THRESHOLD)."""
ALPHA_MAX = 0.999
"""Alphas are clamped to this (gsplat >= 1.3; the original 3DGS code uses 0.99)."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops before the Gaussian that would take its transmittance to this or below."""
RADIUS_SIGMAS = 3.33
"""Largest bounding-box half-size in standard deviations."""
SH_C0 = 0.28209479177387814
"""The degree-0 SH basis; colour = SH_C0 * sh0 + 0.5 for a view-independent Gaussian."""
MAX_SH_DEGREE = 3


@dataclass(frozen=True)
class Rasterization:
    """C images of N Gaussians, channels last as gsplat returns them, plus what densification reads."""

    colors: Tensor
    """Rendered colours with the background blended in, (C, H, W, D)."""
    alphas: Tensor
    """Accumulated opacity 1 - T, (C, H, W, 1)."""
    depths: Tensor
    """Expected camera-frame depth sum(w z) / max(alpha, 1e-10), (C, H, W, 1); 0 where nothing was drawn."""
    means2d: Tensor
    """Projected means in pixels, (C, N, 2), part of the autograd graph (gsplat's ``meta["means2d"]``)."""
    radii: Tensor
    """Bounding-box half-sizes in pixels, (C, N, 2) int32; 0 where the Gaussian is culled."""


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances R S S^T R^T, (N, 3, 3), from quaternions (N, 4) wxyz (normalised here) and scales."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*quats.shape[:-1], 3, 3)
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project(means: Tensor, covars: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
            eps2d: float = 0.3) -> tuple[Tensor, Tensor, Tensor]:
    """EWA projection of N Gaussians into C pinhole cameras.

    Returns projected means (C, N, 2), blurred 2D covariances (C, N, 2, 2) and camera depths (C, N).
    """
    R, t = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # (C, 1, 3, 3), (C, 1, 3)
    means_c = (R @ means[None, :, :, None]).squeeze(-1) + t  # (C, N, 3)
    covars_c = R @ covars[None] @ R.transpose(-1, -2)  # (C, N, 3, 3)
    tx, ty, tz = means_c.unbind(-1)
    tz = torch.where(tz.abs() < 1e-6, torch.full_like(tz, 1e-6), tz)  # culled anyway; keeps gradients finite
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # The Jacobian is evaluated at the mean clamped to 1.3 x the field of view (gsplat, 3DGS).
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = tz * torch.clamp(tx / tz, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
    ty = tz * torch.clamp(ty / tz, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * tx / tz**2, zero, fy / tz, -fy * ty / tz**2], dim=-1)
    J = J.reshape(*tz.shape, 2, 3)
    covars2d = J @ covars_c @ J.transpose(-1, -2)
    covars2d = covars2d + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    means2d = (Ks[:, None, :2, :3] @ means_c[..., None]).squeeze(-1) / tz[..., None]
    return means2d, covars2d, means_c[..., 2]


def conics_of(covars2d: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse 2D covariances as (a, b, c) upper triangles, (..., 3), and the determinants (...,)."""
    a, b = covars2d[..., 0, 0], 0.5 * (covars2d[..., 0, 1] + covars2d[..., 1, 0])
    c = covars2d[..., 1, 1]
    det = a * c - b * b
    safe = det.clamp(min=1e-10)
    return torch.stack([c / safe, -b / safe, a / safe], dim=-1), det


@torch.no_grad()
def radii_of(means2d: Tensor, covars2d: Tensor, depths: Tensor, det: Tensor, opacities: Tensor, width: int,
             height: int, near_plane: float = 0.01, far_plane: float = 1e10,
             radius_clip: float = 0.0) -> Tensor:
    """Opacity-aware bounding-box half-sizes (C, N, 2) int32, 0 for culled Gaussians (gsplat's CUDA rule)."""
    opacity = opacities.expand_as(depths)
    extend = torch.sqrt(2.0 * torch.log((opacity / ALPHA_THRESHOLD).clamp(min=1.0))).clamp(max=RADIUS_SIGMAS)
    std = torch.stack([covars2d[..., 0, 0], covars2d[..., 1, 1]], dim=-1).clamp(min=0).sqrt()
    radius = torch.ceil(extend[..., None] * std)
    keep = (depths > near_plane) & (depths < far_plane) & (det > 0) & (opacity >= ALPHA_THRESHOLD)
    keep &= (radius > radius_clip).any(-1)
    keep &= (means2d + radius > 0).all(-1)
    keep &= (means2d[..., 0] - radius[..., 0] < width) & (means2d[..., 1] - radius[..., 1] < height)
    return torch.where(keep[..., None], radius, 0).int()


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis up to ``degree`` (0-3) at unit directions (..., 3): (..., (degree + 1)^2), gsplat's order."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    bases = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        bases += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
    if degree >= 2:
        z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
        bases += [0.5462742152960395 * s1, -1.092548430592079 * z * y, 0.9461746957575601 * z2 - 0.3153915652525201,
                  -1.092548430592079 * z * x, 0.5462742152960395 * c1]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        bases += [-0.5900435899266435 * s2, 1.445305721320277 * z * s1, tmp_c * y,
                  z * (1.865881662950577 * z2 - 1.119528997770346), tmp_c * x, 1.445305721320277 * z * c1,
                  -0.5900435899266435 * c2]
    return torch.stack(bases, dim=-1)


def sh_to_colors(coeffs: Tensor, means: Tensor, campos: Tensor, sh_degree: int) -> Tensor:
    """View-dependent colours (C, N, 3) = max(0, SH(dir) + 0.5) from coefficients (N, K, 3)."""
    n_bases = (sh_degree + 1) ** 2
    if coeffs.shape[-2] < n_bases:
        raise ValueError(f"sh_degree {sh_degree} needs {n_bases} SH coefficients, got {coeffs.shape[-2]}")
    dirs = F.normalize(means[None] - campos[:, None], dim=-1)  # (C, N, 3)
    colors = torch.einsum("cnb,nbk->cnk", sh_bases(sh_degree, dirs), coeffs[:, :n_bases])
    return torch.clamp_min(colors + 0.5, 0.0)


CHUNK_HITS = 1 << 17
"""Gaussians are blended in depth-ordered chunks of about this many (Gaussian, pixel) box pairs."""


@dataclass(frozen=True)
class _Boxes:
    """Kept (camera, Gaussian) pairs sorted by camera, then depth, then index, with their pixel boxes."""

    gaussian: Tensor
    """Flat (camera * N + Gaussian) index, (B,)."""
    camera: Tensor
    lo: Tensor
    """First pixel column and row inside the box, (B, 2)."""
    size: Tensor
    """Box width and height in pixels (0 when off the image), (B, 2)."""


@dataclass(frozen=True)
class _Hits:
    """(Gaussian, pixel) pairs of one chunk, alpha >= 1/255, sorted by pixel, then depth, then index."""

    gaussian: Tensor
    """Flat (camera * N + Gaussian) index, (M,)."""
    centre: Tensor
    """The pixel centre (x, y), (M, 2)."""
    pixel: Tensor
    """Flat pixel index over (C, H, W), (M,)."""
    cell: Tensor
    """Flat index into the chunk's (active pixels, max_per_pixel) padded layout, (M,)."""
    pixels: Tensor
    """The chunk's active pixels, flat over (C, H, W), (A,)."""
    max_per_pixel: int


def _alpha(delta: Tensor, conic: Tensor, opacity: Tensor) -> Tensor:
    """gsplat's alpha of a Gaussian at a pixel: min(0.999, o exp(-sigma)), 0 if below 1/255 or sigma < 0."""
    dx, dy = delta.unbind(-1)
    a, b, c = conic.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))


@torch.no_grad()
def _boxes(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> _Boxes:
    """The pixel-centre boxes of the kept Gaussians, in compositing order."""
    camera, gaussian = torch.nonzero((radii > 0).all(-1), as_tuple=True)  # ordered by (camera, index)
    order = torch.argsort(depths[camera, gaussian], stable=True)
    order = order[torch.argsort(camera[order], stable=True)]
    camera, gaussian = camera[order], gaussian[order]
    centre, radius = means2d[camera, gaussian], radii[camera, gaussian].to(means2d.dtype)
    lo = torch.ceil(centre - radius - 0.5).long().clamp(min=0)
    hi = torch.minimum(torch.floor(centre + radius - 0.5).long() + 1, torch.tensor([width, height]).to(lo))
    return _Boxes(camera * radii.shape[1] + gaussian, camera, lo, (hi - lo).clamp(min=0))


@torch.no_grad()
def _chunk_hits(boxes: _Boxes, geometry: Tensor, done: Tensor, width: int, height: int) -> _Hits:
    """Pixels in the chunk's boxes where alpha >= 1/255 and the pixel is not finished, sorted by pixel.

    ``geometry`` (C * N, 6) holds means2d, conic and opacity.
    """
    counts = boxes.size[:, 0] * boxes.size[:, 1]
    box_width = boxes.size[:, 0].repeat_interleave(counts)
    local = torch.arange(len(box_width), device=counts.device) - (torch.cumsum(counts, 0) - counts).repeat_interleave(
        counts)
    row = torch.div(local, box_width, rounding_mode="floor")
    xy = boxes.lo.repeat_interleave(counts, dim=0) + torch.stack([local - row * box_width, row], dim=-1)
    pixel = boxes.camera.repeat_interleave(counts) * (height * width) + xy[:, 1] * width + xy[:, 0]
    gaussian, centre = boxes.gaussian.repeat_interleave(counts), xy.to(geometry.dtype) + 0.5
    a = geometry.index_select(0, gaussian)
    keep = (_alpha(a[:, :2] - centre, a[:, 2:5], a[:, 5]) > 0) & ~done[pixel]
    pixel, perm = torch.sort(pixel[keep], stable=True)
    gaussian, centre = gaussian[keep][perm], centre[keep][perm]
    pixels, per_pixel = torch.unique_consecutive(pixel, return_counts=True)
    slot = torch.arange(len(pixel), device=pixel.device) - (torch.cumsum(per_pixel, 0) - per_pixel).repeat_interleave(
        per_pixel)
    row_of_hit = torch.arange(len(pixels), device=pixel.device).repeat_interleave(per_pixel)
    max_per_pixel = max(int(per_pixel.max()), 1) if len(per_pixel) else 1
    return _Hits(gaussian, centre, pixel, row_of_hit * max_per_pixel + slot, pixels, max_per_pixel)


def _composite_chunk(hits: _Hits, attrs: Tensor, transmittance: Tensor,
                     accum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Blend one chunk behind what is already drawn; returns transmittance, accumulated values, finished."""
    means2d, conic, opacity, values = attrs.index_select(0, hits.gaussian).split([2, 3, 1, attrs.shape[1] - 6], 1)
    alpha = _alpha(means2d - hits.centre, conic, opacity[:, 0])
    n_rows, n_cols = len(hits.pixels), hits.max_per_pixel
    rows = alpha.new_zeros(n_rows * n_cols).index_put((hits.cell,), alpha).view(n_rows, n_cols)
    start = transmittance.index_select(0, hits.pixels)[:, None]
    after = start * torch.cumprod(1.0 - rows, dim=1)  # transmittance after each Gaussian
    before = torch.cat([start, after[:, :-1]], dim=1)
    drawn = after > TRANSMITTANCE_MIN  # a prefix of each row: the transmittance only decreases
    weights = (rows * before * drawn).view(-1).index_select(0, hits.cell)
    accum = accum.index_add(0, hits.pixel, weights[:, None] * values)
    n_drawn = drawn.sum(1, keepdim=True)
    last = torch.where(n_drawn > 0, after.gather(1, (n_drawn - 1).clamp(min=0)), start).squeeze(1)
    return transmittance.index_copy(0, hits.pixels, last), accum, hits.pixels[~drawn[:, -1]]


def _blend(attrs: Tensor, boxes: _Boxes, n_pixels: int, width: int, height: int,
           chunk_hits: int) -> tuple[Tensor, Tensor]:
    """Front-to-back blending of ``attrs`` (C * N, [means2d, conic, opacity, values...]) in chunks of
    about ``chunk_hits`` box pairs; a chunk skips the pixels that earlier chunks finished.

    Returns the accumulated values (P, F - 6) and the transmittance (P,) of every pixel.
    """
    connect = attrs[:0].sum()  # zero, but in the graph: a render with nothing on screen still backpropagates
    transmittance = attrs.new_ones(n_pixels) + connect
    accum = attrs.new_zeros(n_pixels, attrs.shape[1] - 6) + connect
    done = torch.zeros(n_pixels, dtype=torch.bool, device=attrs.device)
    geometry = attrs.detach()[:, :6].contiguous()  # means2d, conic, opacity: all that hit-finding reads
    ends = torch.cumsum(boxes.size[:, 0] * boxes.size[:, 1], 0)
    if len(ends) == 0:
        return accum, transmittance
    bounds = torch.arange(1, int(ends[-1]) // chunk_hits + 1, device=ends.device) * chunk_hits
    cuts = [0, *torch.searchsorted(ends, bounds, right=True).tolist(), len(ends)]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if lo == hi:
            continue
        chunk = _Boxes(*(getattr(boxes, f)[lo:hi] for f in ("gaussian", "camera", "lo", "size")))
        hits = _chunk_hits(chunk, geometry, done, width, height)
        if len(hits.pixel) == 0:
            continue
        transmittance, accum, finished = _composite_chunk(hits, attrs, transmittance, accum)
        done[finished] = True
        if bool(done.all()):
            break
    return accum, transmittance


def rasterize_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                        viewmats: Tensor, Ks: Tensor, width: int, height: int, *, sh_degree: int | None = None,
                        backgrounds: Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10,
                        eps2d: float = 0.3, radius_clip: float = 0.0, chunk_hits: int = CHUNK_HITS) -> Rasterization:
    """Render N Gaussians into C cameras with gsplat.rasterization's arguments and conventions.

    ``means`` (N, 3), ``quats`` (N, 4) wxyz, ``scales`` (N, 3) linear, ``opacities`` (N,) in [0, 1];
    ``colors`` (N, D) or (C, N, D) activated features when ``sh_degree`` is None, else SH coefficients
    (N, K, 3) with ``(sh_degree + 1)^2 <= K``; ``viewmats`` (C, 4, 4) world-to-camera (OpenCV), ``Ks``
    (C, 3, 3); ``backgrounds`` (C, D) or None (black). ``chunk_hits`` bounds the memory of one blending
    step (it changes nothing else).
    """
    n_cams = viewmats.shape[0]
    covars = quat_scale_to_covar(quats, scales)
    means2d, covars2d, depths = project(means, covars, viewmats, Ks, width, height, eps2d)
    conics, det = conics_of(covars2d)
    radii = radii_of(means2d, covars2d, depths, det, opacities, width, height, near_plane, far_plane,
                     radius_clip)
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # like gsplat; R^T is not R^-1 for a float32 R
        colors = sh_to_colors(colors, means, campos, sh_degree)
    elif colors.dim() == 2:
        colors = colors.expand(n_cams, *colors.shape)
    attrs = torch.cat([means2d, conics, opacities.expand(n_cams, -1)[..., None], depths[..., None], colors], dim=-1)
    attrs = attrs.reshape(-1, attrs.shape[-1])  # (C * N, 2 + 3 + 1 + 1 + D)
    boxes = _boxes(means2d.detach(), radii, depths.detach(), width, height)
    accum, transmittance = _blend(attrs, boxes, n_cams * height * width, width, height, chunk_hits)
    depth, color = accum[:, 0], accum[:, 1:]
    if backgrounds is not None:
        bg = backgrounds.expand(n_cams, colors.shape[-1])
        color = color + transmittance[:, None] * bg.repeat_interleave(height * width, dim=0)
    alpha = 1.0 - transmittance
    shape = (n_cams, height, width)
    return Rasterization(colors=color.reshape(*shape, -1), alphas=alpha.reshape(*shape, 1),
                         depths=(depth / alpha.clamp(min=1e-10)).reshape(*shape, 1), means2d=means2d,
                         radii=radii)

