"""Exact ray-primitive intersections for the five shapes, vectorised over rays.

Every function takes ray origins ``o`` and directions ``d``, both (M, 3) in world coordinates, and returns a
``RayHit``: the ray parameter ``t`` of the first hit in front of the origin (``o + t * d`` is the hit point;
``inf`` where the ray misses) and the outward unit normal there. ``d`` need not be unit length, so when
``d`` has camera-frame z = 1, ``t`` is the camera-frame depth.

Sizes: every shape fits in the unit ball (BOUNDING_RADIUS) and they look about equally big. The sphere,
cylinder, cone and torus have their axis on world z; the torus is then tilted by TORUS_TILT_DEG about the
world y axis (its top leans towards the front, +x) so that its hole shows from low elevations too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

BOUNDING_RADIUS = 1.0
"""Every shape lies inside the ball of this radius around the origin."""
SPHERE_RADIUS = 0.75
CUBE_HALF_EDGE = 0.57
"""Axis-aligned cube [-h, h]^3; its corners are at distance 0.987."""
CYLINDER_RADIUS = 0.62
CYLINDER_HALF_HEIGHT = 0.65
"""Capped cylinder x^2 + y^2 <= r^2, |z| <= h."""
CONE_RADIUS = 0.7
CONE_BASE_Z = -0.65
CONE_APEX_Z = 0.75
"""Capped cone: base disc of CONE_RADIUS at CONE_BASE_Z, apex on the z axis at CONE_APEX_Z."""
TORUS_MAJOR_RADIUS = 0.62
TORUS_MINOR_RADIUS = 0.27
TORUS_TILT_DEG = 30.0
"""Rotation of the torus about world +y: its axis becomes (sin t, 0, cos t)."""

_T_MIN = 1e-4
_TORUS_TRACE_STEPS = 48
_TORUS_HIT_TOL = 1e-5
_OPEN, _HIT, _MISS = 0, 1, 2


@dataclass(frozen=True)
class RayHit:
    """First intersections of a batch of rays with one primitive."""

    t: Tensor
    """Ray parameter of the hit, (M,); ``inf`` where the ray misses."""
    normal: Tensor
    """Outward unit surface normal at the hit in world coordinates, (M, 3); arbitrary where it misses."""

    @property
    def hit(self) -> Tensor:
        """Boolean mask of the rays that hit, (M,)."""
        return torch.isfinite(self.t)


def _quadratic_roots(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Both real roots of ``a t^2 + b t + c`` (smaller first; ``inf`` where none), cancellation-free."""
    disc = b * b - 4 * a * c
    sq = disc.clamp_min(0).sqrt()
    q = -0.5 * (b + torch.copysign(sq, b))
    t1, t2 = q / a, c / q
    lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
    missing = (disc < 0) | torch.isnan(lo) | torch.isnan(hi)
    inf = torch.full_like(lo, math.inf)
    lo = torch.where(missing, inf, lo)
    hi = torch.where(missing, inf, hi)
    return lo, hi


def _valid(t: Tensor, ok: Tensor) -> Tensor:
    """``t`` where ``ok`` and ``t`` is in front of the origin, else inf."""
    return torch.where(ok & (t > _T_MIN), t, torch.full_like(t, math.inf))


def _nearest(ts: list[Tensor], normals: list[Tensor]) -> RayHit:
    """The nearest of several candidate hits per ray."""
    t_all = torch.stack(ts, dim=1)  # (M, K)
    n_all = torch.stack(normals, dim=1)  # (M, K, 3)
    t, k = t_all.min(dim=1)
    normal = n_all.gather(1, k.view(-1, 1, 1).expand(-1, 1, 3)).squeeze(1)
    return RayHit(t, normal)


def _constant_normal(like: Tensor, x: float, y: float, z: float) -> Tensor:
    return like.new_tensor([x, y, z]).expand(like.shape[0], 3)


def hit_sphere(o: Tensor, d: Tensor) -> RayHit:
    """Sphere of SPHERE_RADIUS at the origin."""
    a = (d * d).sum(-1)
    b = 2 * (o * d).sum(-1)
    c = (o * o).sum(-1) - SPHERE_RADIUS**2
    lo, hi = _quadratic_roots(a, b, c)
    t = torch.where(lo > _T_MIN, lo, hi)
    t = _valid(t, torch.ones_like(t, dtype=torch.bool))
    p = o + torch.nan_to_num(t, posinf=0.0).unsqueeze(-1) * d
    return RayHit(t, p / SPHERE_RADIUS)


def hit_cube(o: Tensor, d: Tensor) -> RayHit:
    """Axis-aligned cube [-CUBE_HALF_EDGE, CUBE_HALF_EDGE]^3 (slab method)."""
    h = CUBE_HALF_EDGE
    inv = 1.0 / d
    t0, t1 = (-h - o) * inv, (h - o) * inv
    t_in = torch.nan_to_num(torch.minimum(t0, t1), nan=-math.inf)
    t_out = torch.nan_to_num(torch.maximum(t0, t1), nan=math.inf)
    t_near, axis = t_in.max(dim=1)
    t_far = t_out.min(dim=1).values
    t = _valid(t_near, t_near <= t_far)
    sign = -torch.sign(d.gather(1, axis.unsqueeze(1)))
    normal = torch.zeros_like(o).scatter_(1, axis.unsqueeze(1), sign)
    return RayHit(t, normal)


def hit_cylinder(o: Tensor, d: Tensor) -> RayHit:
    """Capped cylinder of CYLINDER_RADIUS around z, |z| <= CYLINDER_HALF_HEIGHT."""
    r, h = CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    lo, _ = _quadratic_roots(dx * dx + dy * dy, 2 * (ox * dx + oy * dy), ox * ox + oy * oy - r * r)
    z_side = oz + torch.nan_to_num(lo, posinf=0.0) * dz
    t_side = _valid(lo, z_side.abs() <= h)
    p_side = o + torch.nan_to_num(t_side, posinf=0.0).unsqueeze(-1) * d
    n_side = torch.stack([p_side[:, 0] / r, p_side[:, 1] / r, torch.zeros_like(ox)], dim=-1)
    ts, normals = [t_side], [n_side]
    for z_cap in (h, -h):
        t_cap = torch.nan_to_num((z_cap - oz) / dz, nan=math.inf)
        t_safe = torch.nan_to_num(t_cap, posinf=0.0, neginf=0.0)
        x, y = ox + t_safe * dx, oy + t_safe * dy
        ts.append(_valid(t_cap, torch.isfinite(t_cap) & (x * x + y * y <= r * r)))
        normals.append(_constant_normal(o, 0.0, 0.0, math.copysign(1.0, z_cap)))
    return _nearest(ts, normals)


def hit_cone(o: Tensor, d: Tensor) -> RayHit:
    """Capped cone: base disc of CONE_RADIUS at z = CONE_BASE_Z, apex at z = CONE_APEX_Z."""
    k2 = (CONE_RADIUS / (CONE_APEX_Z - CONE_BASE_Z)) ** 2
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    w0 = CONE_APEX_Z - oz
    a = dx * dx + dy * dy - k2 * dz * dz
    b = 2 * (ox * dx + oy * dy + k2 * w0 * dz)
    c = ox * ox + oy * oy - k2 * w0 * w0
    ts, normals = [], []
    for root in _quadratic_roots(a, b, c):
        p = o + torch.nan_to_num(root, posinf=0.0, neginf=0.0).unsqueeze(-1) * d
        z = p[:, 2]
        ts.append(_valid(root, torch.isfinite(root) & (z >= CONE_BASE_Z) & (z <= CONE_APEX_Z)))
        n = torch.stack([p[:, 0], p[:, 1], k2 * (CONE_APEX_Z - z)], dim=-1)
        normals.append(n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    t_cap = torch.nan_to_num((CONE_BASE_Z - oz) / dz, nan=math.inf)
    t_safe = torch.nan_to_num(t_cap, posinf=0.0, neginf=0.0)
    x, y = ox + t_safe * dx, oy + t_safe * dy
    ts.append(_valid(t_cap, torch.isfinite(t_cap) & (x * x + y * y <= CONE_RADIUS**2)))
    normals.append(_constant_normal(o, 0.0, 0.0, -1.0))
    return _nearest(ts, normals)


def torus_rotation(dtype=torch.float32) -> Tensor:
    """Object-to-world rotation of the torus, (3, 3): a tilt of TORUS_TILT_DEG about world +y."""
    s, c = math.sin(math.radians(TORUS_TILT_DEG)), math.cos(math.radians(TORUS_TILT_DEG))
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype)


def torus_sdf(p: Tensor) -> Tensor:
    """Exact signed distance to the (untilted, object-frame) torus around z, (M,) for p (M, 3)."""
    return _torus_sdf_xyz(p[:, 0], p[:, 1], p[:, 2])


def _torus_sdf_xyz(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    q = torch.sqrt(x * x + y * y) - TORUS_MAJOR_RADIUS
    return torch.sqrt(q * q + z * z) - TORUS_MINOR_RADIUS


def _torus_normal(p: Tensor) -> Tensor:
    """Outward unit normal of the object-frame torus at (or near) surface points p."""
    rho = p[:, :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ring = torch.cat([p[:, :2] * (TORUS_MAJOR_RADIUS / rho), torch.zeros_like(rho)], dim=-1)
    n = p - ring
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _torus_bounds(o: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distance of unit rays through the torus's bounds: its bounding sphere and |z| <= r."""
    b = (o * u).sum(-1)
    disc = b * b - ((o * o).sum(-1) - (TORUS_MAJOR_RADIUS + TORUS_MINOR_RADIUS) ** 2)
    sq = disc.clamp_min(0).sqrt()
    s0, s1 = (TORUS_MINOR_RADIUS - o[:, 2]) / u[:, 2], (-TORUS_MINOR_RADIUS - o[:, 2]) / u[:, 2]
    slab_in = torch.nan_to_num(torch.minimum(s0, s1), nan=-math.inf)
    slab_out = torch.nan_to_num(torch.maximum(s0, s1), nan=math.inf)
    s_near = torch.maximum(torch.maximum(-b - sq, slab_in), torch.zeros_like(b))
    s_far = torch.minimum(-b + sq, slab_out)
    s_far = torch.where(disc > 0, s_far, torch.full_like(s_far, -math.inf))
    return s_near, s_far


def _sphere_trace_torus(o: Tensor, u: Tensor, s: Tensor, s_far: Tensor) -> tuple[Tensor, Tensor]:
    """March unit rays from ``s`` by the exact SDF (so never past the first root), compacting as they finish.

    Returns the final distances and a status per ray: _HIT (converged onto the surface), _MISS (left the
    bounds) or _OPEN (still marching when the step budget ran out: rays that skim the surface).
    """
    s_out = s.clone()
    status = torch.full_like(s, _OPEN, dtype=torch.int8)
    idx = torch.arange(s.shape[0])
    ox, oy, oz = o.unbind(-1)
    ux, uy, uz = u.unbind(-1)
    for step in range(1, _TORUS_TRACE_STEPS + 1):
        dist = _torus_sdf_xyz(ox + s * ux, oy + s * uy, oz + s * uz)
        s = s + dist
        if step % 4:
            continue
        hit, miss = dist < _TORUS_HIT_TOL, s >= s_far
        s_out[idx] = s
        status[idx[hit]] = _HIT
        status[idx[miss & ~hit]] = _MISS
        keep = (~hit & ~miss).nonzero().squeeze(1)
        idx, s, s_far = idx[keep], s[keep], s_far[keep]
        ox, oy, oz, ux, uy, uz = (a[keep] for a in (ox, oy, oz, ux, uy, uz))
        if idx.numel() == 0:
            break
    return s_out, status


def _torus_quartic(o: Tensor, u: Tensor) -> tuple[Tensor, ...]:
    """Coefficients (c3, c2, c1, c0) of the monic quartic in s whose roots are the hits of o + s u (|u| = 1).

    From (|p|^2 + R^2 - r^2)^2 = 4 R^2 (x^2 + y^2); it has the sign of the SDF.
    """
    big_r2 = TORUS_MAJOR_RADIUS**2
    k = (o * o).sum(-1) + big_r2 - TORUS_MINOR_RADIUS**2
    b = (o * u).sum(-1)
    c2 = 4 * b * b + 2 * k - 4 * big_r2 * (u[:, 0] ** 2 + u[:, 1] ** 2)
    c1 = 4 * b * k - 8 * big_r2 * (o[:, 0] * u[:, 0] + o[:, 1] * u[:, 1])
    c0 = k * k - 4 * big_r2 * (o[:, 0] ** 2 + o[:, 1] ** 2)
    return 4 * b, c2, c1, c0


def _first_quartic_root(coeffs: tuple[Tensor, ...], s_min: Tensor, s_max: Tensor) -> Tensor:
    """Smallest real root in [s_min, s_max] of monic quartics (inf if none), from companion eigenvalues."""
    c3, c2, c1, c0 = coeffs
    companion = torch.zeros(c0.shape[0], 4, 4, dtype=c0.dtype)
    companion[:, 1, 0] = companion[:, 2, 1] = companion[:, 3, 2] = 1.0
    companion[:, :, 3] = -torch.stack([c0, c1, c2, c3], dim=-1)
    roots = torch.linalg.eigvals(companion)
    ok = (roots.imag.abs() < 1e-6) & (roots.real >= s_min.unsqueeze(-1)) & (roots.real <= s_max.unsqueeze(-1))
    return torch.where(ok, roots.real, torch.full_like(roots.real, math.inf)).min(dim=-1).values


def _newton_quartic(coeffs: tuple[Tensor, ...], s: Tensor, steps: int = 2) -> Tensor:
    """Polish roots of monic quartics by Newton steps; grazing rays (tiny slope) keep their ``s``."""
    c3, c2, c1, c0 = coeffs
    for _ in range(steps):
        f = (((s + c3) * s + c2) * s + c1) * s + c0
        slope = ((4 * s + 3 * c3) * s + 2 * c2) * s + c1
        step = f / torch.where(slope.abs() > 1e-9, slope, torch.ones_like(slope))
        s = s - torch.where(step.abs() < 1e-3, step, torch.zeros_like(step))
    return s


def hit_torus(o: Tensor, d: Tensor) -> RayHit:
    """Torus (major TORUS_MAJOR_RADIUS, minor TORUS_MINOR_RADIUS) around z, tilted by TORUS_TILT_DEG.

    Sphere tracing the exact SDF from the bounds never steps past the first root and settles most rays in
    a few steps; the few rays that skim the surface get the exact first root of the quartic from companion
    eigenvalues. Newton steps on the quartic in float64 then make every depth exact to ~1e-6, except on
    rays that graze the silhouette within ~1e-5, whose depth is ill-conditioned anyway.
    """
    rot = torus_rotation(o.dtype)
    o_obj, d_obj = o @ rot, d @ rot  # world -> object: R^T p for row vectors
    length = d_obj.norm(dim=-1)
    u = d_obj / length.unsqueeze(-1)
    t = torch.full_like(length, math.inf)
    normal = torch.zeros_like(o)
    s_near, s_far = _torus_bounds(o_obj, u)
    idx = (s_near < s_far).nonzero().squeeze(1)
    if idx.numel() == 0:
        return RayHit(t, normal)
    s_far = s_far[idx]
    s, status = _sphere_trace_torus(o_obj[idx], u[idx], s_near[idx], s_far)
    rot64 = torus_rotation(torch.float64)
    o64, d64, s = o[idx].double() @ rot64, d[idx].double() @ rot64, s.double()
    length64 = d64.norm(dim=-1)
    u64 = d64 / length64.unsqueeze(-1)
    coeffs = _torus_quartic(o64, u64)
    open_ = (status == _OPEN).nonzero().squeeze(1)
    if open_.numel():
        sub = tuple(c[open_] for c in coeffs)
        s[open_] = _first_quartic_root(sub, s[open_] - 1e-4, s_far[open_].double())
    keep = ((status == _HIT) | ((status == _OPEN) & torch.isfinite(s))).nonzero().squeeze(1)
    idx, o64, u64, length64 = idx[keep], o64[keep], u64[keep], length64[keep]
    s = _newton_quartic(tuple(c[keep] for c in coeffs), s[keep])
    t[idx] = (s / length64).to(t.dtype)
    normal[idx] = (_torus_normal(o64 + s.unsqueeze(-1) * u64) @ rot64.T).to(o.dtype)
    return RayHit(t, normal)


INTERSECTORS = {
    "sphere": hit_sphere,
    "cube": hit_cube,
    "cylinder": hit_cylinder,
    "cone": hit_cone,
    "torus": hit_torus,
}
"""The intersection function of each shape name (a plain table, not a registry filled at import)."""
