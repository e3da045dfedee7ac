"""Training data of the shapes teacher: a cache of renders (made once per run) and their VAE latents."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
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
        dist = vae.encode(x).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    # contiguous: VAE outputs can come back channels-last, and conv kernels round differently on that
    # layout, which would make a run that resumed from the saved (contiguous) cache drift from one that did not
    return LatentCache(torch.cat(means).contiguous(), torch.cat(stds).contiguous())
