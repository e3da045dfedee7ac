"""View-dependent prompting (DreamFusion): the prompt of each training view says where the camera is.

A :class:`ViewPrompter` turns a base prompt and a camera into that view's prompt. This module has the
generic one, :class:`SuffixViewPrompter` ("a chair" -> "a chair, side view"); a domain with its own caption
grammar brings its own (the shapes world's rebuilds its caption, ``gendistill.domains.shapes``).

View phrases follow threestudio's thresholds, with the overhead threshold lowered to fit the default rig's
-10..60 deg elevations:

- "overhead view" when the elevation is above OVERHEAD_ELEVATION_DEG;
- otherwise by azimuth, wrapped to [-180, 180): "front view" within FRONT_HALF_ANGLE_DEG of 0 (the +x
  axis), "back view" within BACK_HALF_ANGLE_DEG of 180, "side view" in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gendistill.render.cameras import Camera

OVERHEAD_ELEVATION_DEG = 50.0
"""Cameras strictly above this elevation get "overhead view"."""
FRONT_HALF_ANGLE_DEG = 45.0
"""Cameras with |azimuth| < this (after wrapping) get "front view"."""
BACK_HALF_ANGLE_DEG = 45.0
"""Cameras with |azimuth - 180| < this get "back view"."""
VIEW_PHRASES: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")
"""Every view phrase, in class-index order."""


def view_phrase(camera: Camera) -> str:
    """"front view", "side view", "back view" or "overhead view" for the camera's angles."""
    if camera.elevation_deg > OVERHEAD_ELEVATION_DEG:
        return "overhead view"
    azimuth = (camera.azimuth_deg + 180.0) % 360.0 - 180.0  # in [-180, 180)
    if abs(azimuth) < FRONT_HALF_ANGLE_DEG:
        return "front view"
    if abs(azimuth) > 180.0 - BACK_HALF_ANGLE_DEG:
        return "back view"
    return "side view"


@runtime_checkable
class ViewPrompter(Protocol):
    """Makes the prompt of one view."""

    def prompt(self, base: str, camera: Camera | None) -> str:
        """The prompt for ``base`` seen from ``camera``; ``camera=None``: the prompt without a view phrase."""
        ...


@dataclass(frozen=True)
class SuffixViewPrompter:
    """DreamFusion's template for any prompt: ``"<base>, <view phrase>"`` ("a chair, side view")."""

    def prompt(self, base: str, camera: Camera | None) -> str:
        """The stripped base, plus ", <view phrase>" when there is a camera."""
        base = base.strip()
        return base if camera is None else f"{base}, {view_phrase(camera)}"
