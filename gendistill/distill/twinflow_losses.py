"""TwinFlow's objective as functions of a flow map, independent of the network that implements it.

Cheng, Sun, Li et al., "TwinFlow: Realizing One-step Generation on Large Models with Self-adversarial Flows",
arXiv:2512.05150 (ICLR 2026); reference code inclusionAI/TwinFlow (``tutorials/mnist/methodes.py``: classes
``RCGM`` and ``TwinFlow``), whose formulas these follow. Its base, RCGM: "Any-step Generation via N-th Order
Recursive Consistent Velocity Field Estimation" (LINs-lab/RCGM).

Units: flow time, as SD3 trains (``x_t = (1 - t) x0 + t eps``, velocity ``v = eps - x0``; the library's
canonical ``x = x0 + sigma eps`` is ``x_t / (1 - t)`` with ``sigma = t / (1 - t)``). A *flow map*
``F(x_t, t, r)`` is the average velocity from t down to r: ``x_r = x_t - (t - r) F``; ``F(x, t, t)`` is the
instantaneous velocity. TwinFlow extends time to ``[-1, 1]``: at ``-t`` the same network learns the flow from
noise to *its own one-step samples* (the fake trajectory), at ``+t`` the flow to the data (the real one).

Terms (all MSE to stop-gradient targets):

- ``base`` (RCGM): ``F(x_t, t, r)`` towards the N-th order recursive target: one conditional-velocity step of
  ``delta`` from t, then N Euler steps of the target network from ``t - delta`` to r; the residual of
  ``(t - r) F = delta v + displacement`` (divided by ``delta``, clamped to +-1) is subtracted from ``F``.
  Intervals shorter than ``delta`` regress on the conditional velocity (flow matching);
- ``real``: ``F(x_t, t, t)`` towards ``eps - x0`` (flow matching on the data);
- ``fake`` (self-adversarial): the one-step sample ``x_fake = z - F(z, 1, 0)``; ``F(x_t', -t, -t)`` towards
  ``z - x_fake`` on ``x_t' = (1 - t) x_fake + t z``;
- ``rectify``: ``F(z, 1, 0)`` moved by ``F(x, -t, -t) - F(x, t, t)`` on a fresh noising of ``x_fake`` (fake minus
  real velocity: DMD's gradient, with the model's own two branches as the fake and real scores);
- ``consistency``: the RCGM target for the one-step map ``F(z, 1, 0)`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

FlowMap = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``F(x, t, r) -> average velocity`` with t, r of shape (B,) (t may be negative: the fake trajectory)."""


def expand(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against ``like``."""
    return t.view(-1, *[1] * (like.dim() - 1))


def interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``x_t = (1 - |t|) x0 + |t| eps`` and the conditional velocity ``eps - x0``."""
    tb = expand(t.abs(), x0)
    return (1 - tb) * x0 + tb * eps, eps - x0


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error, (B,)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


@torch.no_grad()
def euler_displacement(flow_map: FlowMap, x: Tensor, t: Tensor, r: Tensor, steps: int) -> Tensor:
    """``x_t - x_r`` by ``steps`` equal Euler steps of the flow map's own jumps from t down to r (RCGM's
    ``multi_fwd``: each step jumps with ``F(x, t_i, t_{i+1})``)."""
    total = torch.zeros_like(x)
    for i in range(steps):
        t_i = t + (r - t) * (i / steps)
        t_n = t + (r - t) * ((i + 1) / steps)
        jump = flow_map(x, t_i, t_n) * expand(t_i - t_n, x)
        x, total = x - jump, total + jump
    return total


@torch.no_grad()
def rcgm_target(target_map: FlowMap, prediction: Tensor, velocity: Tensor, x_t: Tensor, t: Tensor, r: Tensor,
                order: int = 2, delta: float = 0.01, clamp: float = 1.0) -> Tensor:
    """RCGM's N-th order target for ``prediction = F(x_t, t, r)`` (reference: ``get_rcgm_target``).

    ``t_m = max(t - delta, r)``; ``D`` = displacement of ``order`` Euler steps of ``target_map`` from
    ``x_t - delta * velocity`` at t_m to r. Consistency asks ``(t - r) F = delta v + D``; the residual
    ``((t - r) F - D) / delta - v`` (for ``t - r < delta``: ``F - v``) is clamped and subtracted from ``F``.
    """
    t_m = torch.maximum(t - delta, r)
    displacement = euler_displacement(target_map, x_t - delta * velocity, t_m, r, order)
    short = (t - r) < delta
    gap = expand(torch.where(short, torch.ones_like(t), (t - r) / delta), x_t)
    scale = expand(torch.where(short, 1 / (t - r).clamp_min(1e-12), torch.full_like(t, 1 / delta)), x_t)
    residual = prediction * gap - displacement * scale - velocity
    return prediction - residual.clamp(-clamp, clamp)


def one_step(flow_map: FlowMap, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_fake, F(z, 1, 0))``: the one-step sample from noise ``z`` and the map's output (with grad)."""
    ones = torch.ones(z.shape[0], device=z.device, dtype=z.dtype)
    velocity = flow_map(z, ones, torch.zeros_like(ones))
    return z - velocity, velocity


@torch.no_grad()
def rectify_gradient(flow_map: FlowMap, x_fake: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """Fake minus real velocity on ``x_fake`` noised to ``t`` (reference: ``dist_match``)."""
    x_t, _ = interpolate(x_fake, eps, t)
    return flow_map(x_t, -t, -t) - flow_map(x_t, t, t)


def twin_terms(flow_map: FlowMap, target_map: FlowMap, x0: Tensor, generator: torch.Generator,
               order: int = 2, delta: float = 0.01, clamp: float = 1.0, twin: bool = True,
               uncond_map: FlowMap | None = None, enhance: float = 0.0) -> dict[str, Tensor]:
    """Every term's (B,) loss on real latents ``x0`` (``twin=False``: RCGM's base term only).

    ``target_map`` makes the recursive targets (the reference's EMA model, or the model itself). Noise and
    times come from ``generator``: t ~ U(0, 1), r ~ U(0, t), as the reference's ``prepare_inputs``. With
    ``enhance > 0`` the conditional velocity target gains ``enhance * (F_c - F_u)(x_t, t, t)`` of
    ``target_map`` against ``uncond_map`` (the reference's ``enhance_target``: guidance trained in).
    """
    def draw(*shape):
        return torch.rand(shape, generator=generator).to(x0)

    def noise():
        return torch.randn(x0.shape, generator=generator).to(x0)

    n = x0.shape[0]
    t = draw(n)
    r = t - draw(n) * t
    z = noise()
    x_t, velocity = interpolate(x0, z, t)
    if enhance > 0:
        with torch.no_grad():
            velocity = velocity + enhance * (target_map(x_t, t, t) - uncond_map(x_t, t, t))
    prediction = flow_map(x_t, t, r)
    terms = {"base": mse(prediction, rcgm_target(target_map, prediction, velocity, x_t, t, r, order, delta, clamp))}
    if not twin:
        return terms
    terms["real"] = mse(flow_map(x_t, t, t), velocity)
    x_fake, fake_map = one_step(flow_map, z)
    x_t_fake, fake_velocity = interpolate(x_fake.detach(), z, t)
    terms["fake"] = mse(flow_map(x_t_fake, -t, -t), fake_velocity)
    push = rectify_gradient(flow_map, x_fake.detach(), noise(), draw(n))
    terms["rectify"] = mse(fake_map, (fake_map - push).detach())
    ones = torch.ones_like(t)
    terms["consistency"] = mse(fake_map, rcgm_target(target_map, fake_map.detach(), velocity, z, ones,
                                                     torch.zeros_like(t), order, delta, clamp))
    return terms
