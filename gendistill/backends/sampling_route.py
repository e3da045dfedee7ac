"""What ``--sampler auto`` runs: the pipeline's own diffusers scheduler, through the generic driver, or, where
that scheduler cannot be followed, a named gendistill sampler and a one-line note on stderr saying so.

Route taken (issue 12): one generic driver (``scheduler_driver``) runs any scheduler's own ``set_timesteps`` /
``scale_model_input`` / ``step`` over the canonical denoiser, so parity with stock pipelines holds by
construction and schedulers added to diffusers later work unchanged. The named samplers (``--sampler euler``,
``ddim``, ``heun``, ``dpmpp_2m``, ``consistency``) stay gendistill's own functional samplers, as training uses
them. Cases auto cannot follow exactly:

- schedulers whose timesteps are not training timesteps (EDM's ``c_noise = log(sigma) / 4``, consistency
  models' preconditioning): the network would see a timestep it was not trained on, so stock pipelines are
  wrong there too; auto samples with euler on the model's training schedule instead;
- ``--karras`` on a scheduler without ``use_karras_sigmas`` (DDIM, PNDM, LCM, TCD, DDPM, Euler ancestral):
  the named sampler with Karras sigmas.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

from gendistill.backends.scheduler_driver import fresh_scheduler
from gendistill.errors import UserError

TRAINING_TIMESTEPS_UNFOLLOWABLE = {
    "EDMEulerScheduler": "EDM preconditioning (timesteps are log(sigma)/4, not training timesteps)",
    "EDMDPMSolverMultistepScheduler": "EDM preconditioning (timesteps are log(sigma)/4, not training timesteps)",
    "CMStochasticIterativeScheduler": "consistency-model preconditioning (timesteps are not training timesteps)",
}
"""Scheduler class -> why the driver cannot map its timesteps to the network's noise levels."""

NAMED_FOLLOWERS = {
    "LCMScheduler": "consistency",
    "TCDScheduler": "consistency",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "FlowMatchEulerDiscreteScheduler": "euler",
}
"""Scheduler class -> the named sampler closest to it (used where auto falls back; others: euler)."""


@dataclass(frozen=True)
class SamplingRoute:
    """Either ``scheduler`` (a fresh diffusers scheduler for the driver) or ``sampler`` (a named one)."""

    scheduler: object | None = None
    sampler: str | None = None
    karras: bool = False
    note: str | None = None

    @property
    def label(self) -> str:
        """What a table or the demo shows: the scheduler's class name or the sampler's name."""
        if self.scheduler is not None:
            karras = " Karras" if self.scheduler.config.get("use_karras_sigmas", False) else ""
            return type(self.scheduler).__name__ + karras
        return self.sampler + (" Karras" if self.karras else "")


def named_follower(scheduler_name: str) -> str:
    return NAMED_FOLLOWERS.get(scheduler_name, "euler")


def route_for(scheduler, sampler: str = "auto", karras: bool = False, eta: float = 0.0) -> SamplingRoute:
    """The route for a request's ``sampler`` on a pipeline whose scheduler is ``scheduler``."""
    if sampler != "auto":
        return SamplingRoute(sampler=sampler, karras=karras)
    name = type(scheduler).__name__
    if name in TRAINING_TIMESTEPS_UNFOLLOWABLE:
        fallback = "euler"
        return SamplingRoute(sampler=fallback, karras=karras, note=(
            f"auto cannot follow {name}: {TRAINING_TIMESTEPS_UNFOLLOWABLE[name]}; sampling with {fallback}"))
    if karras and "use_karras_sigmas" not in scheduler.config:
        fallback = named_follower(name)
        fallback = "euler" if fallback == "consistency" else fallback
        return SamplingRoute(sampler=fallback, karras=True, note=(
            f"{name} has no Karras sigmas; --karras samples with gendistill's {fallback} on Karras sigmas instead"))
    chosen = type(scheduler).from_config(scheduler.config, use_karras_sigmas=True) if karras \
        else fresh_scheduler(scheduler)
    if eta > 0 and "eta" not in inspect.signature(chosen.step).parameters:
        raise UserError(f"eta needs a scheduler whose step takes eta (DDIM, TCD) or --sampler euler/ddim; "
                        f"this model's scheduler is {name}")
    return SamplingRoute(scheduler=chosen)


_said: set[str] = set()


def say_once(note: str | None) -> None:
    """Print a route's note on stderr, once per process (evaluation loops ask many times)."""
    if note and note not in _said:
        _said.add(note)
        print(f"note: {note}", file=sys.stderr)
