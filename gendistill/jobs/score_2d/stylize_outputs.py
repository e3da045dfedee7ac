"""The run folder of ``gendistill stylize``: writing stylized.png, strip.png, curves.png and metrics.json (config.yaml is written before the run starts)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves


@dataclass
class StylizeResult:
    """What a stylize run made."""

    out_dir: Path
    images: Tensor
    """The output image(s), (K, 3, H, W) in [0, 1], at the model's size."""
    files: list[Path]
    """The image files written (stylized.png first)."""
    mode: str
    """"transfer" (with a content image) or "sample" (text-to-image with the reference's style)."""
    steps: int
    seconds: float
    final: dict[str, float]
    """The last step's loss terms (ad, content), where logged."""
    stopped: bool = False


def resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) or (B, 3, H, W) in [0, 1] to ``size`` (antialiased bilinear); unchanged when already there."""
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    if tuple(batch.shape[-2:]) != tuple(size):
        batch = F.interpolate(batch.float(), tuple(size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
    return batch if image.ndim == 4 else batch[0]


def write_outputs(out_dir: Path, config, inputs, mode: str, images: Tensor, reference: Tensor,
                  content: Tensor | None, history: list[dict], seconds: float, stopped: str | None,
                  steps: int) -> StylizeResult:
    """Write the images, the strip, the curves and the metrics of a finished (or stopped) run."""
    images = images.detach().float().cpu()
    size = tuple(images.shape[-2:])
    files = _save_images(out_dir, images, None if content is None else tuple(content.shape[-2:]))
    panels = ([] if content is None else [resize(content, size)]) + [resize(reference, size), *images]
    save_png(make_grid(torch.stack(panels), columns=len(panels)), out_dir / "strip.png")
    title = f"attention distillation ({mode}): {inputs.prompt.strip()}"
    curves = plot_curves(history, out_dir / "curves.png", title=title)
    final = {k: v for k, v in (history[-1] if history else {}).items()
             if k in ("loss", "ad", "content") and isinstance(v, float) and math.isfinite(v)}
    outputs = [p.name for p in files] + ["strip.png", "config.yaml"] + (["curves.png"] if curves else [])
    metrics = {"mode": mode, "prompt": inputs.prompt.strip(), "reference": str(inputs.reference),
               "content": None if inputs.content is None else str(inputs.content), "model": config.model,
               "layers": config.loss.layers, "steps": steps, "seconds": round(seconds, 2),
               "seconds_per_step": round(seconds / max(1, steps), 4), "stopped": stopped is not None,
               "stop_reason": stopped, "final": final, "outputs": sorted(outputs)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return StylizeResult(out_dir, images, files, mode, steps, seconds, final, stopped is not None)


def _save_images(out_dir: Path, images: Tensor, content_size: tuple[int, int] | None) -> list[Path]:
    """stylized.png (at the content's size when there is one), and stylized_<k>.png for every further image."""
    first = images[0] if content_size is None else resize(images[0], content_size)
    files = [save_png(first, out_dir / "stylized.png")]
    files += [save_png(image, out_dir / f"stylized_{k}.png") for k, image in enumerate(images[1:], start=1)]
    return files
