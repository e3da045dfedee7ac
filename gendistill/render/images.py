"""Image grids and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def make_grid(images: Tensor, columns: int | None = None, pad: int = 2) -> Tensor:
    """Tile (N, 3, H, W) images in [0, 1] into one (3, H', W') image on a white background."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.ones(c, rows * (h + pad) + pad, columns * (w + pad) + pad, dtype=images.dtype)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    return grid


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] to a PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a (3, H, W) image, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
    return path


def load_image(path: str | Path, name: str = "") -> Tensor:
    """An image file as (3, H, W) in [0, 1] (transparency composited on white); a UserError for a missing or
    unreadable file (``name``, e.g. "--reference", starts the unreadable file's message)."""
    from gendistill.errors import UserError, first_line

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no image at {path}")
    try:
        with Image.open(path) as image:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except OSError as err:  # PIL's UnidentifiedImageError is one
        raise UserError(f"{name + ' ' if name else ''}{path} is not a readable image: {first_line(err)}") from None
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return torch.from_numpy(np.ascontiguousarray(rgb * alpha + (1 - alpha))).permute(2, 0, 1).contiguous()
