"""What a sketch run leaves in its folder (also when stopped or interrupted): the strokes' files (sketch.svg,
sketch.png, strokes.safetensors), progress.gif, init.png, curves.png and metrics.json. (``config.yaml`` is
written before the run starts.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.jobs.text_to_3d.outputs import final_loss
from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.render.scenes.strokes import StrokeScene
from gendistill.score.attention_maps import AttentionMaps
from gendistill.train.trainer import TrainResult

GIF_FILE, INIT_FILE, CURVES_FILE, METRICS_FILE = "progress.gif", "init.png", "curves.png", "metrics.json"


@dataclass(frozen=True)
class SketchResult:
    """What a sketch run wrote and measured."""

    out_dir: Path
    """The output folder."""
    scene: StrokeScene
    """The final strokes."""
    svg: Path
    """sketch.svg."""
    png: Path
    """sketch.png: the same drawing rasterised (box filter, as SVG renderers draw it)."""
    files: list[Path]
    """Every file written."""
    steps: int
    """Steps done (fewer than the configured iterations when the run was stopped)."""
    seconds: float
    """Wall-clock of the optimisation loop."""
    final_loss: float
    """Mean loss over the last 10% of steps."""
    stopped: bool
    """Whether the run ended before its last step."""


def save_gif(frames: list[Tensor], path: Path, fps: int) -> Path:
    """``frames`` (each (3, H, W) in [0, 1], resized to the first one's size) as a looping GIF."""
    import imageio.v3 as iio

    size = frames[0].shape[-2:]
    stack = torch.stack([f if f.shape[-2:] == size else
                         F.interpolate(f[None], size, mode="bilinear", align_corners=False, antialias=True)[0]
                         for f in frames])
    array = (stack.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    iio.imwrite(path, array, duration=1000.0 / fps, loop=0)
    return path


def save_init(maps: AttentionMaps, path: Path, canvas: int) -> Path:
    """The generation whose attention placed the strokes, beside its start map (upsampled, grey)."""
    image = F.interpolate(maps.image[None], (canvas, canvas), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    fused = F.interpolate(maps.fused[None, None].float(), (canvas, canvas), mode="bilinear", align_corners=False)[0]
    return save_png(make_grid(torch.stack([image.clamp(0, 1), fused.expand(3, -1, -1)]), columns=2), path)


def write_sketch_outputs(config, scene: StrokeScene, history: list[dict], result: TrainResult,
                         frames: list[Tensor], maps: AttentionMaps | None, out_dir: Path) -> SketchResult:
    """Write every output of a sketch run (``config`` a ``SketchConfig``) from its current strokes."""
    out_dir = Path(out_dir)
    files = scene.export(out_dir)
    canvas = config.strokes.canvas
    final = scene.draw(canvas, canvas, "box").detach().cpu()
    files.append(save_gif([*frames, final], out_dir / GIF_FILE, config.gif_fps))
    if maps is not None:
        files.append(save_init(maps, out_dir / INIT_FILE, canvas))
    curves = plot_curves(history, out_dir / CURVES_FILE, title=f"{config.method.KIND} sketch: {config.prompt}")
    files += [curves] if curves is not None else []
    steps, loss = len(history) + result.skipped_updates, final_loss(history)
    metrics = {"prompt": config.prompt, "method": config.method.KIND, "model": config.model, "init": config.init,
               "steps": steps, "iterations": config.run.iterations, "stopped": result.stopped is not None,
               "stop_reason": result.stopped, "skipped_steps": result.skipped_updates,
               "seconds": round(result.seconds, 2), "seconds_per_step": round(result.seconds / max(1, len(history)), 4),
               **scene.summary(), "final_loss": loss,
               "outputs": sorted({p.name for p in files} | {METRICS_FILE, "config.yaml"})}
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    files.append(out_dir / METRICS_FILE)
    return SketchResult(out_dir, scene, files[0], files[1], files, steps, result.seconds, loss,
                        result.stopped is not None)
