"""An image's latents as a score-distillation scene: what LUSD, DDS and Attention Distillation optimise.

The latents are the parameters; the guidance reads them as they are (a render's ``latents`` field: no VAE
round trip, whose backward pass would stamp the encoder's patterns on the gradient). ``rgb`` is the decoded
image, made only when something reads it (previews, exports). The scene ignores the cameras, as every 2D scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gendistill.errors import check_choice, check_range, key_path
from gendistill.recipe import ParamGroup, Update
from gendistill.render.cameras import Cameras

Decoder = Callable[[Tensor], Tensor]
"""Latents (B, C, h, w) to images (B, 3, H, W) in [0, 1], without gradients (the pipeline's VAE)."""
LATENTS_FILE = "latents.safetensors"


@dataclass
class LatentSceneConfig:
    """Image latents, initialised from a given image's, optimised with Adam."""

    KIND: ClassVar[str] = "latents"

    optimizer: Literal["adam", "sgd"] = "adam"
    """Adam, or plain SGD (LUSD: its gradient is already normalised to a scheduled size)."""
    lr: float = 0.05
    """Learning rate on the latents."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's betas."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "lr"), self.lr, 0.0)
        check_choice(key_path(path, "optimizer"), self.optimizer, ("adam", "sgd"))

    def check_installed(self) -> None:
        """Nothing beyond the base install."""

    def build(self, latents: Tensor, decode: Decoder) -> LatentScene:
        """A scene starting at ``latents`` (1, C, h, w), shown through ``decode``."""
        return LatentScene(latents, decode, self)


class LatentRender:
    """The latents as every camera sees them; ``rgb`` is decoded on first read (no gradient)."""

    def __init__(self, latents: Tensor, decode: Decoder):
        self.latents, self._decode, self._rgb = latents, decode, None

    @property
    def rgb(self) -> Tensor:
        if self._rgb is None:
            with torch.no_grad():
                self._rgb = self._decode(self.latents[:1].detach()).expand(len(self.latents), -1, -1, -1)
        return self._rgb

    @property
    def alpha(self) -> Tensor:
        return torch.ones_like(self.rgb[:, :1])


class LatentScene(nn.Module):
    """One image's latents as parameters (see the module docstring)."""

    kind = "latents"

    def __init__(self, latents: Tensor, decode: Decoder, config: LatentSceneConfig):
        super().__init__()
        if latents.ndim != 4 or latents.shape[0] != 1:
            raise ValueError(f"latents must be (1, C, h, w), got {tuple(latents.shape)}")
        self.latents = nn.Parameter(latents.detach().clone().float())
        self.decode, self.config = decode, config

    def render(self, cameras: Cameras, background: Tensor, generator: torch.Generator | None = None) -> LatentRender:
        return LatentRender(self.latents.expand(len(cameras), -1, -1, -1), self.decode)

    @torch.no_grad()
    def image(self) -> Tensor:
        """The decoded image, (3, H, W) in [0, 1]."""
        return self.decode(self.latents.detach())[0]

    @torch.no_grad()
    def render_views(self, cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        rgb = self.image().unsqueeze(0).expand(len(cameras), -1, -1, -1).clone()
        return rgb, torch.ones_like(rgb[:, :1])

    def parameter_groups(self) -> tuple[ParamGroup, ...]:
        return (ParamGroup("latents", [self.latents], self.config.lr),)

    def modules(self) -> dict[str, nn.Module]:
        return {"latents": self}

    def regularisation(self, render, step: int) -> Tensor | None:
        return None

    def before_backward(self, step: int, render, cameras: Cameras) -> None:
        pass

    def after_update(self, update: Update, render, cameras: Cameras) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def export(self, out_dir: Path) -> list[Path]:
        """The raw latents (the job writes the images it makes of them)."""
        from safetensors.torch import save_file

        path = Path(out_dir) / LATENTS_FILE
        save_file({"latents": self.latents.detach().cpu().contiguous()}, str(path))
        return [path]

    def summary(self) -> dict:
        return {"latent_shape": list(self.latents.shape[1:])}

    def describe(self) -> str:
        c, h, w = self.latents.shape[1:]
        return f"{c}x{h}x{w} latents"
