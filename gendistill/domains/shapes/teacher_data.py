"""Training data of the shapes teacher: a cache of renders (made once per run) and their VAE latents, kept
on disk as safetensors with a fingerprint of what made them, and the batches each training stage draws."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from gendistill.domains.shapes.teacher import DataConfig


@dataclass
class RenderCache:
    """Renders with their scene and camera; images stored as uint8 to keep many of them small."""

    images: Tensor
    """(N, 3, 64, 64) uint8."""
    shape_ids: Tensor
    """(N,) index into SHAPES."""
    colour_ids: Tensor
    """(N,) index into COLOURS."""
    azimuth_deg: Tensor
    """(N,) float64 camera azimuth."""
    elevation_deg: Tensor
    """(N,) float64 camera elevation."""
    captions: list[str] = field(default_factory=list)
    """Caption without view phrase ("a red cube"); filled by :meth:`with_captions`."""
    view_captions: list[str] = field(default_factory=list)
    """Caption with view phrase ("a red cube, front view"); filled by :meth:`with_captions`."""

    def __len__(self) -> int:
        return self.images.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).contiguous() for name in TENSOR_FIELDS}

    def with_captions(self) -> RenderCache:
        """Fill both caption lists with the domain's caption() of each scene and camera."""
        from gendistill.domains.shapes.camera import Camera
        from gendistill.domains.shapes.captions import caption
        from gendistill.domains.shapes.scene import scene_from_indices

        self.captions, self.view_captions = [], []
        for s, c, az, el in zip(self.shape_ids.tolist(), self.colour_ids.tolist(), self.azimuth_deg.tolist(),
                                self.elevation_deg.tolist()):
            scene = scene_from_indices(s, c)
            self.captions.append(caption(scene))
            self.view_captions.append(caption(scene, Camera(azimuth_deg=az, elevation_deg=el)))
        return self


TENSOR_FIELDS = ("images", "shape_ids", "colour_ids", "azimuth_deg", "elevation_deg")


@dataclass
class LatentCache:
    """VAE posterior of each cached render: a fresh latent is ``mean + std * eps`` every time."""

    mean: Tensor
    """(N, C, h, w) posterior means (unscaled)."""
    std: Tensor
    """(N, C, h, w) posterior standard deviations."""

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        mean, std = self.mean[idx].contiguous(), self.std[idx].contiguous()
        return (mean + std * torch.randn(mean.shape, generator=generator)).contiguous()


def render_cache(cfg: DataConfig, n: int, generator: torch.Generator) -> RenderCache:
    """Render ``n`` random scenes from random cameras with the shapes dataset's make_batch."""
    from gendistill.domains.shapes.dataset import make_batch

    parts: dict[str, list[Tensor]] = {name: [] for name in TENSOR_FIELDS}
    done = 0
    with tqdm(total=n, desc="rendering training cache", mininterval=5.0) as bar:
        while done < n:
            batch = make_batch(min(cfg.render_batch, n - done), generator, view_phrase_prob=0.0)
            cameras = list(batch.cameras)
            parts["images"].append((batch.images.clamp(0, 1) * 255).round().to(torch.uint8))
            parts["shape_ids"].append(torch.as_tensor(batch.shape_ids, dtype=torch.long))
            parts["colour_ids"].append(torch.as_tensor(batch.colour_ids, dtype=torch.long))
            parts["azimuth_deg"].append(torch.tensor([c.azimuth_deg for c in cameras], dtype=torch.float64))
            parts["elevation_deg"].append(torch.tensor([c.elevation_deg for c in cameras], dtype=torch.float64))
            done += len(cameras)
            bar.update(len(cameras))
    return RenderCache(**{name: torch.cat(v) for name, v in parts.items()}).with_captions()


@torch.no_grad()
def encode_cache(vae, images: Tensor, batch_size: int = 256) -> LatentCache:
    """Posterior mean and std of uint8 ``images`` under ``vae`` (no sampling, so no generator)."""
    means, stds = [], []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="encoding latents", mininterval=5.0):
        x = images[start:start + batch_size].float() / 127.5 - 1.0
        dist = vae.encode(x.to(vae.device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    # contiguous: VAE outputs can come back channels-last, and conv kernels round differently on that
    # layout, which would make a run that resumed from the saved (contiguous) cache drift from one that did not
    return LatentCache(torch.cat(means).contiguous(), torch.cat(stds).contiguous())


# ----------------------------------------------------------------------------- batches of the stages


@dataclass(frozen=True)
class ImageBatch:
    """Renders picked for an autoencoder step."""

    images: Tensor
    """(B, 3, 64, 64) float32 in [-1, 1]."""


@dataclass(frozen=True)
class LatentBatch:
    """Cached renders as fresh latents, with their images and sampled prompts."""

    latents: Tensor
    """(B, C, h, w) a fresh posterior sample of each render's latent (unscaled)."""
    images: Tensor
    """(B, 3, 64, 64) float32 in [-1, 1]: the renders the latents encode."""
    prompts: list[str]
    """Caption of each render, with its view phrase or "" (caption dropout) by chance."""


@dataclass(frozen=True)
class RenderBatches:
    """``batch_fn`` of the autoencoder stage: ``batch_size`` cached renders drawn with replacement."""

    renders: RenderCache
    batch_size: int

    def __call__(self, step: int, generator: torch.Generator) -> ImageBatch:
        idx = torch.randint(0, len(self.renders), (self.batch_size,), generator=generator)
        return ImageBatch(self.renders.images[idx].float() / 127.5 - 1.0)


@dataclass(frozen=True)
class LatentBatches:
    """``batch_fn`` of the latent stages: renders drawn with replacement, a prompt for each, a fresh latent."""

    renders: RenderCache
    latents: LatentCache
    batch_size: int
    view_phrase_prob: float = 0.5
    """Probability that a prompt carries its view phrase."""
    caption_dropout: float = 0.0
    """Probability that a prompt is "" (the unconditional prompt of classifier-free guidance)."""

    def __call__(self, step: int, generator: torch.Generator) -> LatentBatch:
        idx = torch.randint(0, len(self.latents), (self.batch_size,), generator=generator)
        prompts = sample_prompts(self.renders, idx, generator, self.view_phrase_prob, self.caption_dropout)
        latents = self.latents.sample(idx, generator)
        return LatentBatch(latents, self.renders.images[idx].float() / 127.5 - 1.0, prompts)


def sample_prompts(renders: RenderCache, idx: Tensor, generator: torch.Generator, view_prob: float,
                   dropout: float) -> list[str]:
    """Caption of each picked render: with its view phrase (prob ``view_prob``) or "" (prob ``dropout``)."""
    use_view = torch.rand(len(idx), generator=generator) < view_prob
    drop = torch.rand(len(idx), generator=generator) < dropout
    return ["" if d else (renders.view_captions[i] if v else renders.captions[i])
            for i, v, d in zip(idx.tolist(), use_view.tolist(), drop.tolist())]


# ----------------------------------------------------------------------------- caches on disk


def load_or_make_renders(path: Path, fingerprint: str, make: Callable[[], RenderCache]) -> RenderCache:
    """Read the render cache at ``path`` if it was made with ``fingerprint``, else make and save it.

    Captions are recomputed from the stored scenes and cameras, so they always follow captions.py.
    """
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return RenderCache(**{name: f.get_tensor(name).clone() for name in TENSOR_FIELDS}).with_captions()
    cache = make()
    _atomic_save(cache.tensors(), path, {"fingerprint": fingerprint})
    return cache


def load_or_make_latents(path: Path, fingerprint: str, make: Callable[[], LatentCache]) -> LatentCache:
    """Read the latent cache at ``path`` if it was made with ``fingerprint``, else make and save it."""
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return LatentCache(f.get_tensor("mean").clone(), f.get_tensor("std").clone())
    cache = make()
    _atomic_save({"mean": cache.mean.contiguous(), "std": cache.std.contiguous()}, path,
                 {"fingerprint": fingerprint})
    return cache


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def encoder_fingerprint(vae) -> str:
    """A cheap checksum of the VAE encoder's weights (to know whether a latent cache still matches it)."""
    with torch.no_grad():
        tensors = [*vae.encoder.state_dict().values(), *vae.quant_conv.state_dict().values()]
        total = sum(float(v.double().sum()) + float(v.double().abs().sum()) for v in tensors if v.is_floating_point())
    return f"{total:.10e}"
