"""Random labelled renders of the shapes world: images, class ids, cameras and captions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gendistill.domains.shapes.camera import Camera, camera_from_uniform
from gendistill.domains.shapes.captions import caption
from gendistill.domains.shapes.raycast import DEFAULT_SUPERSAMPLE, render_batch
from gendistill.domains.shapes.scene import COLOURS, SHAPES, Scene, scene_from_indices
from gendistill.errors import check_choice, check_range

SPLITS: tuple[str, ...] = ("train", "heldout")
"""The fixed splits; each draws from its own seeds, so they never share a random stream."""


@dataclass
class ShapeBatch:
    """N renders with everything that made them; row i of every field describes sample i."""

    images: Tensor
    """RGB in [0, 1] over a white background, (N, 3, H, W) float32."""
    alpha: Tensor
    """Coverage of the object, (N, 1, H, W) float32."""
    depth: Tensor
    """Camera-frame depth of the surface, (N, 1, H, W) float32, 0 on the background."""
    shape_ids: Tensor
    """Index into SHAPES, (N,) int64."""
    colour_ids: Tensor
    """Index into COLOURS, (N,) int64."""
    cameras: list[Camera]
    """The camera of each render."""
    captions: list[str]
    """Caption of each render; with its view phrase for some (see make_batch's view_phrase_prob)."""
    scenes: list[Scene]
    """The scene of each render."""

    def __len__(self) -> int:
        return len(self.scenes)


def make_batch(n: int, generator: torch.Generator, view_phrase_prob: float = 0.5, *, size: int = 64,
               supersample: int = DEFAULT_SUPERSAMPLE, distance: float | None = None) -> ShapeBatch:
    """``n`` renders of uniformly random scenes from uniformly random cameras (as sample_cameras draws).

    Each caption carries its view phrase with probability ``view_phrase_prob``. The same generator state
    gives the same batch, and the first k samples of a batch of n > k are the batch of k. ``distance`` moves
    the camera (None: the rig's 4.0; closer renders larger objects, e.g. a size slider's data).
    """
    shape_ids, colour_ids, cameras, captions, scenes = _draw(n, generator, view_phrase_prob, size, distance)
    out = render_batch(scenes, cameras, supersample=supersample)
    return ShapeBatch(out.rgb, out.alpha, out.depth, shape_ids, colour_ids, cameras, captions, scenes)


def make_captions(n: int, generator: torch.Generator, view_phrase_prob: float = 0.5, *,
                  distance: float | None = None) -> list[str]:
    """The captions ``make_batch`` draws from the same generator state, rendering nothing (prompts-only data,
    e.g. BOOT's data-free distillation); the generator advances exactly as it does there."""
    return _draw(n, generator, view_phrase_prob, 64, distance)[3]


def _draw(n: int, generator: torch.Generator, view_phrase_prob: float, size: int, distance: float | None):
    """The random part of a batch: (shape ids, colour ids, cameras, captions, scenes)."""
    check_range("n", n, 1, None)
    check_range("view_phrase_prob", view_phrase_prob, 0.0, 1.0)
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)  # one row per sample: prefix-stable
    shape_ids = (u[:, 0] * len(SHAPES)).long().clamp_max(len(SHAPES) - 1)
    colour_ids = (u[:, 1] * len(COLOURS)).long().clamp_max(len(COLOURS) - 1)
    cameras = [camera_from_uniform(ua, ue, width=size, height=size, distance=distance) for ua, ue in u[:, 2:4].tolist()]
    with_view = (u[:, 4] < view_phrase_prob).tolist()
    scenes = [scene_from_indices(s, c) for s, c in zip(shape_ids.tolist(), colour_ids.tolist())]
    captions = [caption(sc, cam if v else None) for sc, cam, v in zip(scenes, cameras, with_view)]
    return shape_ids, colour_ids, cameras, captions, scenes


def split_generator(split: str, seed: int = 0) -> torch.Generator:
    """The generator of a fixed split: seeds 2*seed (train) and 2*seed + 1 (heldout) never collide."""
    check_choice("split", split, SPLITS)
    return torch.Generator().manual_seed(len(SPLITS) * seed + SPLITS.index(split))


def fixed_split(n: int, split: str = "train", *, seed: int = 0, view_phrase_prob: float = 0.5,
                size: int = 64, supersample: int = DEFAULT_SUPERSAMPLE) -> ShapeBatch:
    """The first ``n`` samples of a fixed split, identical on every machine and call (for a given seed)."""
    return make_batch(n, split_generator(split, seed), view_phrase_prob, size=size, supersample=supersample)
