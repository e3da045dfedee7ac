"""3D Gaussian splats: parameters, initialisation and a renderer (gsplat on CUDA, pure PyTorch elsewhere).

Parameters live in an ``nn.ParameterDict`` with gsplat's simple_trainer names and activations, so gsplat's
densification strategies can grow and prune them in place:

==============  ===========  ==========================================================
``means``       (N, 3)       world positions
``scales``      (N, 3)       **log** scales; the renderer uses ``exp``
``quats``       (N, 4)       rotations, wxyz, not necessarily normalised
``opacities``   (N,)         **logits**; the renderer uses ``sigmoid``
``sh0``         (N, 1, 3)    degree-0 SH coefficients; colour = SH_C0 * sh0 + 0.5
``shN``         (N, K-1, 3)  higher-degree SH coefficients, K = (max degree + 1)^2
==============  ===========  ==========================================================

Images come out channels first, (C, 3, H, W), like every other image in gendistill (diffusion models,
VAEs, ``make_grid``); gsplat's channels-last output is permuted once at the boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gendistill.errors import check_range
from gendistill.render.cameras import Cameras
from gendistill.render.rasterize_torch import MAX_SH_DEGREE, SH_C0, rasterize_gaussians

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")
"""Parameter names, in gsplat's (and the PLY file's) order."""


class GaussianParams(nn.Module):
    """N 3D Gaussians as unconstrained parameters in ``self.splats`` (see the module docstring)."""

    def __init__(self, means: Tensor, log_scales: Tensor, quats: Tensor, opacity_logits: Tensor, sh0: Tensor,
                 shN: Tensor) -> None:  # noqa: N803 - gsplat's name
        super().__init__()
        n = means.shape[0]
        k = shN.shape[1] + 1 if shN.dim() == 3 else -1
        expected = {"means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,),
                    "sh0": (n, 1, 3), "shN": (n, k - 1, 3)}
        given = {"means": means, "log_scales": log_scales, "quats": quats, "opacity_logits": opacity_logits,
                 "sh0": sh0, "shN": shN}
        for name, tensor in given.items():
            if tuple(tensor.shape) != expected[name]:
                raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(tensor.shape)}")
        if math.isqrt(k) ** 2 != k or math.isqrt(k) - 1 > MAX_SH_DEGREE:
            raise ValueError(f"sh0 + shN must hold (d + 1)^2 coefficients for d in 0..{MAX_SH_DEGREE}, got {k}")
        tensors = (means, log_scales, quats, opacity_logits, sh0, shN)
        self.splats = nn.ParameterDict({key: nn.Parameter(t.detach().clone()) for key, t in zip(SPLAT_KEYS, tensors)})

    def __len__(self) -> int:
        return self.splats["means"].shape[0]

    means = property(lambda self: self.splats["means"], doc="World positions (N, 3).")
    log_scales = property(lambda self: self.splats["scales"], doc="Log scales (N, 3).")
    quats = property(lambda self: self.splats["quats"], doc="Rotations (N, 4), wxyz, unnormalised.")
    opacity_logits = property(lambda self: self.splats["opacities"], doc="Opacity logits (N,).")
    sh0 = property(lambda self: self.splats["sh0"], doc="Degree-0 SH coefficients (N, 1, 3).")
    shN = property(lambda self: self.splats["shN"], doc="Higher SH coefficients (N, K - 1, 3).")  # noqa: N815

    @property
    def scales(self) -> Tensor:
        """Linear scales (N, 3), as gsplat.rasterization takes them."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """Opacities in (0, 1), (N,)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh_coeffs(self) -> Tensor:
        """All SH coefficients (N, K, 3)."""
        return torch.cat([self.sh0, self.shN], dim=1)

    @property
    def sh_degree(self) -> int:
        """The largest SH degree the coefficients hold."""
        return math.isqrt(self.shN.shape[1] + 1) - 1

    @property
    def base_colors(self) -> Tensor:
        """View-independent RGB (N, 3) from ``sh0`` alone, clamped to [0, 1]."""
        return (SH_C0 * self.sh0[:, 0] + 0.5).clamp(0, 1)

    def parameter_groups(self, scene_scale: float = 1.0) -> tuple[ParameterGroup, ...]:
        """One group per parameter with gsplat simple_trainer's learning rates (means scaled by the scene)."""
        lrs = {"means": 1.6e-4 * scene_scale, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2,
               "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
        return tuple(ParameterGroup(key, self.splats[key], lrs[key]) for key in SPLAT_KEYS)


@dataclass(frozen=True)
class ParameterGroup:
    """A named parameter and the learning rate suggested for it."""

    name: str
    """One of SPLAT_KEYS."""
    param: nn.Parameter
    """The parameter (replaced in ``GaussianParams.splats`` when densification grows or prunes)."""
    lr: float
    """Suggested Adam learning rate."""

    def as_torch(self) -> dict:
        """A torch.optim param group; gsplat's strategies find the group by its ``name``."""
        return {"params": [self.param], "lr": self.lr, "name": self.name}


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficients (N, 1, 3) whose colour is ``rgb`` (N, 3)."""
    return ((rgb - 0.5) / SH_C0)[:, None, :]


@torch.no_grad()
def revive_clamped_colours(params: GaussianParams) -> int:
    """Raise every degree-0 colour channel that sits below 0 (the renderer clamps it there, and no gradient
    passes the clamp) to exactly 0, in place: the renders do not change, and the channel can be optimised again
    (a saturated text-to-3D object has its other channels far below 0, so an edit could never bring them up).
    Only for view-independent Gaussians (SH degree 0); returns how many channels were raised."""
    if params.sh_degree != 0:
        return 0
    floor = rgb_to_sh0(torch.zeros(1, 3, device=params.sh0.device, dtype=params.sh0.dtype))
    low = params.sh0 < floor
    params.sh0.copy_(torch.where(low, floor, params.sh0))
    return int(low.sum())


def init_from_points(points: Tensor, colors: Tensor, *, sh_degree: int = 3, opacity: float = 0.1,
                     scale_factor: float = 1.0) -> GaussianParams:
    """Isotropic Gaussians at ``points`` (N, 3) with colours (N, 3) in [0, 1], gsplat simple_trainer style.

    Scales are ``scale_factor`` times the RMS distance to the 3 nearest neighbours; rotations are the
    identity; higher SH coefficients are zero.
    """
    check_range("sh_degree", sh_degree, 0, MAX_SH_DEGREE)
    check_range("opacity", opacity, 1e-6, 1 - 1e-6)
    n = points.shape[0]
    if points.shape != (n, 3) or colors.shape != (n, 3) or n == 0:
        raise ValueError(f"points and colors must be (N, 3) with N > 0, got {tuple(points.shape)} and "
                         f"{tuple(colors.shape)}")
    points = points.float()
    log_scales = torch.log(_neighbour_distance(points) * scale_factor)[:, None].expand(n, 3)
    quats = points.new_zeros(n, 4)
    quats[:, 0] = 1.0
    logits = points.new_full((n,), math.log(opacity / (1 - opacity)))
    shN = points.new_zeros(n, (sh_degree + 1) ** 2 - 1, 3)  # noqa: N806
    return GaussianParams(points, log_scales, quats, logits, rgb_to_sh0(colors.float()), shN)


def init_from_sphere(n: int, radius: float, generator: torch.Generator, *, sh_degree: int = 3,
                     opacity: float = 0.1) -> GaussianParams:
    """``n`` Gaussians uniform inside a ball of ``radius`` at the origin with random colours (DreamGaussian's
    start for text-to-3D); scales come from the 3 nearest neighbours as in :func:`init_from_points`."""
    check_range("n", n, 1, None)
    check_range("radius", radius, 0.0, None)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    r = radius * torch.rand(n, 1, generator=generator) ** (1 / 3)
    colors = torch.rand(n, 3, generator=generator)
    return init_from_points(direction * r, colors, sh_degree=sh_degree, opacity=opacity)


def _neighbour_distance(points: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """RMS distance from each point to its ``k`` nearest other points, (N,); 0.01 for a lone point."""
    n = points.shape[0]
    k = min(k, n - 1)
    if k == 0:
        return points.new_full((n,), 0.01)
    rows = []
    for start in range(0, n, chunk):
        d2 = torch.cdist(points[start:start + chunk], points).square()
        rows.append(d2.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(1))
    return torch.cat(rows).sqrt().clamp(min=1e-7)


@dataclass(frozen=True)
class RenderOutput:
    """C rendered views, channels first."""

    rgb: Tensor
    """Colour with the background blended in, (C, 3, H, W)."""
    alpha: Tensor
    """Accumulated opacity, (C, 1, H, W)."""
    depth: Tensor
    """Expected camera-frame depth (sum of weight x depth over alpha), (C, 1, H, W); 0 where alpha is 0."""
    means2d: Tensor
    """Projected means (C, N, 2) in the autograd graph; densification reads its gradient."""
    radii: Tensor
    """Screen-space half-sizes (C, N, 2) int32, 0 where culled; densification reads them."""


@dataclass(frozen=True)
class GaussianRenderer:
    """Renders GaussianParams with gsplat.rasterization on CUDA and the pure-PyTorch rasterizer elsewhere."""

    near_plane: float = 0.01
    """Gaussians at camera depth <= this are culled."""
    far_plane: float = 1e10
    """Gaussians at camera depth >= this are culled."""
    eps2d: float = 0.3
    """Added to the diagonal of every projected 2D covariance (a low-pass filter, in pixels^2)."""
    radius_clip: float = 0.0
    """Gaussians whose screen radius is at most this many pixels are culled."""
    backend: str = "auto"
    """"auto" (gsplat on CUDA, torch elsewhere), "gsplat" or "torch"."""

    def render(self, params: GaussianParams, cameras: Cameras, background: Tensor | None = None,
               sh_degree: int | None = None) -> RenderOutput:
        """Render every camera; ``background`` is (3,) or (C, 3) (None: black); ``sh_degree`` defaults to all."""
        sh_degree = params.sh_degree if sh_degree is None else sh_degree
        if not 0 <= sh_degree <= params.sh_degree:
            raise ValueError(f"sh_degree must be in 0..{params.sh_degree} for these Gaussians, got {sh_degree}")
        if self.backend not in ("auto", "gsplat", "torch"):
            raise ValueError(f"backend must be 'auto', 'gsplat' or 'torch', got {self.backend!r}")
        means = params.means
        use_gsplat = self.backend == "gsplat" or (self.backend == "auto" and means.is_cuda)
        if use_gsplat and not means.is_cuda:
            raise ValueError("backend 'gsplat' needs the Gaussians on a CUDA device; use 'torch' or 'auto'")
        cameras = cameras.to(means.device, means.dtype)
        if background is not None:
            background = background.to(means).expand(len(cameras), 3)
        args = (means, params.quats, params.scales, params.opacities, params.sh_coeffs, cameras.viewmats,
                cameras.Ks, cameras.width, cameras.height)
        if use_gsplat:
            return self._render_gsplat(args, sh_degree, background)
        out = rasterize_gaussians(*args, sh_degree=sh_degree, backgrounds=background, near_plane=self.near_plane,
                                  far_plane=self.far_plane, eps2d=self.eps2d, radius_clip=self.radius_clip)
        return RenderOutput(rgb=out.colors.permute(0, 3, 1, 2), alpha=out.alphas.permute(0, 3, 1, 2),
                            depth=out.depths.permute(0, 3, 1, 2), means2d=out.means2d, radii=out.radii)

    def render_features(self, params: GaussianParams, cameras: Cameras, features: Tensor) -> Tensor:
        """Alpha-blend any per-Gaussian ``features`` (N, D) instead of colours, over a zero background:
        ``out(p) = sum_i w_i(p) f_i`` with ``w_i(p)`` Gaussian i's blending weight at pixel p (its alpha times
        the transmittance in front of it), (C, D, H, W). Linear in ``features``, so its gradient with respect to
        them is the weights themselves (``render.splat_weights`` reads them that way)."""
        means = params.means
        cameras = cameras.to(means.device, means.dtype)
        args = (means, params.quats, params.scales, params.opacities, features.to(means), cameras.viewmats,
                cameras.Ks, cameras.width, cameras.height)
        options = {"near_plane": self.near_plane, "far_plane": self.far_plane, "eps2d": self.eps2d,
                   "radius_clip": self.radius_clip}
        if self.backend == "gsplat" or (self.backend == "auto" and means.is_cuda):
            from gsplat import rasterization

            out = rasterization(*args, sh_degree=None, packed=False, **options)[0]
        else:
            out = rasterize_gaussians(*args, sh_degree=None, **options).colors
        return out.permute(0, 3, 1, 2)

    def _render_gsplat(self, args: tuple, sh_degree: int, background: Tensor | None) -> RenderOutput:
        from gsplat import rasterization  # CUDA only; imported here so CPU users never load it

        colors, alphas, meta = rasterization(
            *args, sh_degree=sh_degree, backgrounds=background, near_plane=self.near_plane,
            far_plane=self.far_plane, eps2d=self.eps2d, radius_clip=self.radius_clip, packed=False,
            render_mode="RGB+ED")
        colors, alphas = colors.permute(0, 3, 1, 2), alphas.permute(0, 3, 1, 2)
        return RenderOutput(rgb=colors[:, :3], alpha=alphas, depth=colors[:, 3:], means2d=meta["means2d"],
                            radii=meta["radii"])
