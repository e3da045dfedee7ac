"""Volume rendering of a radiance field: camera rays, ray/cube clipping, sampling, compositing.

Rays follow :mod:`gendistill.render.cameras`: the ray of pixel (row v, column u) passes through the pixel
centre ``(u + 0.5, v + 0.5)``; its direction has camera-frame z = 1 (not unit length), so the ray parameter
``t`` of a point is its camera-frame depth and ``depth`` comes out in the same units as the shapes world's.

Samples are bins ``[t_i, t_(i+1))`` between the ray's entry into and exit from the field's cube; the field is
evaluated once per bin (at a uniform jitter inside it when a generator is given, at its middle otherwise),
and the bin's opacity is ``1 - exp(-density * (t_(i+1) - t_i) * |d|)`` (NeRF's quadrature).

With an occupancy grid (:mod:`gendistill.render.nerf.occupancy`, training only), each ray's bins span just
its stretch through occupied cells, and samples in empty cells get zero density without a field query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from gendistill.render.cameras import Cameras
from gendistill.render.nerf.occupancy import OccupancyGrid


@dataclass(frozen=True)
class RayRender:
    """What :func:`render_rays` returns for N rays of S samples."""

    rgb: Tensor
    """Colour (N, 3) with the background composited in."""
    alpha: Tensor
    """Accumulated opacity (N,) in [0, 1]."""
    depth: Tensor
    """Expected ray parameter over the opacity, sum(w t) / alpha, (N,); 0 where alpha is 0."""
    weights: Tensor
    """Compositing weights (N, S), summing to alpha."""
    positions: Tensor
    """World positions of the samples (N, S, 3)."""
    t: Tensor
    """Ray parameters of the samples (N, S)."""


def camera_rays(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Origins and directions (C, H, W, 3) of every pixel's ray, in world coordinates (directions: camera z = 1)."""
    viewmats, Ks = cameras.viewmats, cameras.Ks  # noqa: N806
    dtype, device = viewmats.dtype, viewmats.device
    u = torch.arange(cameras.width, dtype=dtype, device=device) + 0.5
    v = torch.arange(cameras.height, dtype=dtype, device=device) + 0.5
    x = (u.view(1, 1, -1) - Ks[:, 0, 2].view(-1, 1, 1)) / Ks[:, 0, 0].view(-1, 1, 1)
    y = (v.view(1, -1, 1) - Ks[:, 1, 2].view(-1, 1, 1)) / Ks[:, 1, 1].view(-1, 1, 1)
    x, y = torch.broadcast_tensors(x, y)
    camera_dirs = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (C, H, W, 3)
    R = viewmats[:, :3, :3]  # noqa: N806 - rows are the camera axes in world coordinates
    directions = torch.einsum("chwj,cji->chwi", camera_dirs, R)  # R^T d
    origins = cameras.positions.view(-1, 1, 1, 3).expand_as(directions)
    return origins, directions


def intersect_cube(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Where rays (N, 3) enter and leave the cube ``[-bound, bound]^3`` (slab method), (N,) each.

    ``near`` is clamped to >= 0 (cameras inside the cube start at their centre); rays that miss get
    ``near == far``, so they carry no samples' worth of opacity.
    """
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0, t1 = (-bound - origins) / safe, (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    far = torch.maximum(far, near)
    return near, far


def stratified_bins(near: Tensor, far: Tensor, num_samples: int) -> Tensor:
    """Bin edges (N, S + 1) splitting each [near, far] evenly."""
    steps = torch.linspace(0.0, 1.0, num_samples + 1, dtype=near.dtype, device=near.device)
    return near[:, None] + (far - near)[:, None] * steps


def importance_bins(edges: Tensor, weights: Tensor, num_importance: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """Edges (N, S + 1 + num_importance): ``edges`` plus ``num_importance`` draws from the piecewise-constant
    density of ``weights`` (N, S) over those bins (inverse CDF; evenly spaced quantiles without a generator)."""
    n = weights.shape[0]
    pdf = (weights.detach() + 1e-5) / (weights.detach() + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([pdf.new_zeros(n, 1), pdf.cumsum(-1).clamp(max=1.0)], dim=-1)  # (N, S + 1)
    if generator is None:
        q = (torch.arange(num_importance, dtype=pdf.dtype, device=pdf.device) + 0.5) / num_importance
        q = q.expand(n, num_importance).contiguous()
    else:
        q = torch.rand(n, num_importance, generator=generator, device=pdf.device, dtype=pdf.dtype)
    index = torch.searchsorted(cdf, q, right=True).clamp(1, cdf.shape[-1] - 1)
    lo, hi = cdf.gather(-1, index - 1), cdf.gather(-1, index)
    e_lo, e_hi = edges.gather(-1, index - 1), edges.gather(-1, index)
    frac = ((q - lo) / (hi - lo).clamp_min(1e-8)).clamp(0.0, 1.0)
    return torch.sort(torch.cat([edges, e_lo + frac * (e_hi - e_lo)], dim=-1), dim=-1).values


def sample_points(edges: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One ray parameter per bin (N, S): uniform inside it with a generator, its middle without."""
    lo, hi = edges[:, :-1], edges[:, 1:]
    if generator is None:
        return 0.5 * (lo + hi)
    jitter = torch.rand(lo.shape, generator=generator, device=lo.device, dtype=lo.dtype)
    return lo + jitter * (hi - lo)


def composite(density: Tensor, rgb: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """Weights (N, S) and colour (N, 3) from densities (N, S), colours (N, S, 3) and bin lengths (N, S)."""
    opacity = 1.0 - torch.exp(-density * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(opacity[:, :1]), 1.0 - opacity + 1e-10], -1), -1)
    weights = opacity * transmittance[:, :-1]
    return weights, (weights[..., None] * rgb).sum(dim=1)


def render_rays(field, origins: Tensor, directions: Tensor, num_samples: int,
                generator: torch.Generator | None = None, background: Tensor | None = None,
                num_importance: int = 0, occupancy: OccupancyGrid | None = None) -> RayRender:
    """Render N rays (origins, directions: (N, 3)) through ``field`` (anything with ``forward(x, d)`` returning
    density and rgb and a ``config.bound``).

    ``generator`` jitters the samples (training); without it they are deterministic. ``background`` (3,) or
    (N, 3) is composited behind (None: black). ``num_importance`` > 0 adds that many samples drawn from a
    first, gradient-free pass's weights (NeRF's hierarchical sampling, with one field). ``occupancy`` skips
    empty space (see the module docstring).
    """
    edges, t = _bins_and_samples(field, origins, directions, num_samples, generator, num_importance, occupancy)
    return _evaluate(field, origins, directions, edges, t, background, occupancy)


def _bins_and_samples(field, origins: Tensor, directions: Tensor, num_samples: int,
                      generator: torch.Generator | None, num_importance: int,
                      occupancy: OccupancyGrid | None = None) -> tuple[Tensor, Tensor]:
    """Bin edges (N, S' + 1) and sample parameters (N, S') of rays, S' = num_samples + num_importance."""
    near, far = intersect_cube(origins, directions, field.config.bound)
    if occupancy is not None:
        near, far = occupancy.span(origins, directions, near, far)
    edges = stratified_bins(near, far, num_samples)
    if num_importance > 0:
        with torch.no_grad():
            coarse = _evaluate(field, origins, directions, edges, sample_points(edges, generator), None, occupancy)
        edges = importance_bins(edges, coarse.weights, num_importance, generator)
    return edges, sample_points(edges, generator)


def query_field(field, positions: Tensor, directions: Tensor,
                occupancy: OccupancyGrid | None = None) -> tuple[Tensor, Tensor]:
    """Density (M,) and rgb (M, 3) at positions and directions (M, 3); with ``occupancy``, only the positions
    in occupied cells go through the field, the others get density 0 and rgb 0 (and no gradient)."""
    if occupancy is None:
        return field(positions, directions)
    keep = occupancy.contains(positions).nonzero().squeeze(1)
    density, rgb = field(positions[keep], directions[keep])
    m = positions.shape[0]
    return (density.new_zeros(m).index_put((keep,), density),
            rgb.new_zeros(m, rgb.shape[-1]).index_put((keep,), rgb))


def _evaluate(field, origins: Tensor, directions: Tensor, edges: Tensor, t: Tensor,
              background: Tensor | None = None, occupancy: OccupancyGrid | None = None) -> RayRender:
    n, s = t.shape
    positions = origins[:, None, :] + t[..., None] * directions[:, None, :]
    dirs = directions[:, None, :].expand(n, s, 3)
    density, rgb = query_field(field, positions.reshape(-1, 3), dirs.reshape(-1, 3), occupancy)
    deltas = (edges[:, 1:] - edges[:, :-1]) * directions.norm(dim=-1, keepdim=True)
    weights, color = composite(density.view(n, s), rgb.view(n, s, 3), deltas)
    alpha = weights.sum(dim=-1)
    depth = (weights * t).sum(dim=-1) / alpha.clamp_min(1e-10)
    depth = torch.where(alpha > 1e-6, depth, torch.zeros_like(depth))
    if background is not None:
        color = color + (1.0 - alpha)[:, None] * background.to(color).expand(n, 3)
    return RayRender(rgb=color, alpha=alpha, depth=depth, weights=weights, positions=positions, t=t)


def render_cameras(field, cameras: Cameras, num_samples: int = 64, background: Tensor | None = None,
                   chunk: int = 4096, generator: torch.Generator | None = None,
                   num_importance: int = 0, occupancy: OccupancyGrid | None = None,
                   checkpoint_chunks: bool = True) -> tuple[Tensor, Tensor]:
    """Render every camera: rgb (C, 3, H, W) and alpha (C, 1, H, W), differentiable.

    Rays go through the field ``chunk`` at a time; when gradients are on and ``checkpoint_chunks``, each chunk
    is checkpointed (its activations are recomputed in the backward pass: one more forward pass of the field,
    for memory), so a 64x64 view with 64 samples per ray stays small. ``occupancy`` skips empty space.
    """
    param = next(field.parameters())
    cameras = cameras.to(param.device, param.dtype)
    origins, directions = (r.reshape(-1, 3) for r in camera_rays(cameras))
    if background is not None:
        background = background.to(param).expand(len(cameras), 3)
        background = background[:, None, :].expand(len(cameras), cameras.height * cameras.width, 3).reshape(-1, 3)
    rgb, alpha = [], []
    for start in range(0, origins.shape[0], chunk):
        part = slice(start, start + chunk)
        bg = background[part] if background is not None else None
        c, a = _render_chunk(field, origins[part], directions[part], num_samples, bg, generator, num_importance,
                             occupancy, checkpoint_chunks)
        rgb.append(c)
        alpha.append(a)
    c, h, w = len(cameras), cameras.height, cameras.width
    rgb_img = torch.cat(rgb).view(c, h, w, 3).permute(0, 3, 1, 2)
    return rgb_img, torch.cat(alpha).view(c, 1, h, w)


def _render_chunk(field, origins, directions, num_samples, background, generator, num_importance,
                  occupancy=None, checkpoint_chunks=True):
    """(rgb, alpha) of a chunk of rays; the sample positions are drawn outside the checkpointed part so that
    the recomputation in the backward pass sees the same ones."""
    edges, t = _bins_and_samples(field, origins, directions, num_samples, generator, num_importance, occupancy)

    def run(o, d, e, tt, bg):
        out = _evaluate(field, o, d, e, tt, bg, occupancy)
        return out.rgb, out.alpha

    training = torch.is_grad_enabled() and any(p.requires_grad for p in field.parameters())
    if training and checkpoint_chunks:
        return checkpoint(run, origins, directions, edges, t, background, use_reentrant=False)
    return run(origins, directions, edges, t, background)
