"""What a text-to-3D run leaves in its folder, written at the end of the run and also when it is stopped or
interrupted: the scene's files, a turntable, the held-out views, the evaluation (shapes captions),
the loss curves and ``metrics.json``. (``config.yaml`` is written before the run starts.)

Only a run whose prompt is a shapes caption by its config (``views.uses_shapes_captions``) imports the shapes
domain, to evaluate against the analytic object and draw it under the held-out views."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gendistill.render.cameras import stack_cameras
from gendistill.render.gaussians import GaussianParams
from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.jobs.text_to_3d.config import Text3DConfig
from gendistill.jobs.text_to_3d.evaluate3d import Eval3DResult, evaluate_views, heldout_cameras, load_default_classifier
from gendistill.render.scene import Scene
from gendistill.jobs.text_to_3d.turntable import render_turntable, save_turntable
from gendistill.jobs.text_to_3d.views import uses_shapes_captions


@dataclass(frozen=True)
class Text3DResult:
    """What a text-to-3D run wrote and measured."""

    out_dir: Path
    """The output folder."""
    scene: Scene
    """The final scene (GaussianScene or NerfScene)."""
    ply: Path
    """The PLY a 3D viewer shows: the Gaussians in the 3DGS layout, or a NeRF's marching-cubes mesh."""
    files: list[Path]
    """Every scene file written (the PLY first; a NeRF adds its checkpoint and other mesh formats)."""
    turntable: list[Path]
    """The turntable GIF (and MP4)."""
    num_gaussians: int
    """Gaussians in the final scene (0 for a NeRF)."""
    seconds: float
    """Wall-clock of the optimisation loop."""
    final_loss: float
    """Mean loss (guidance surrogate plus regularisers) over the last 10% of steps."""
    skipped_steps: int
    """Steps skipped by the NaN guard."""
    evaluation: Eval3DResult | None
    """Held-out metrics (shapes captions only)."""
    steps: int
    """Steps done (fewer than the configured iterations when the run was stopped)."""
    stopped: bool
    """Whether the run ended before its last step (Stop, an interrupt, an error or the NaN guard)."""

    @property
    def params(self) -> GaussianParams | None:
        """The final Gaussians (None for a NeRF)."""
        return getattr(self.scene, "params", None)


@torch.no_grad()
def _heldout_grid(prompt: str | None, scene: Scene, background: Tensor, out_dir: Path,
                  renders: Tensor | None) -> Path:
    """The 8 held-out views, over the analytic object of ``prompt`` when it is a shapes caption (else None)."""
    cams = heldout_cameras()
    if renders is None:
        renders = scene.render_views(stack_cameras(cams), background)[0].cpu()
    rows = [renders.clamp(0, 1)]
    if prompt is not None:
        from gendistill.domains.shapes import parse_caption, render_batch

        rows.append(render_batch([parse_caption(prompt)] * len(cams), cams).rgb)
    return save_png(make_grid(torch.cat(rows), columns=len(cams)), out_dir / "heldout.png")


def _evaluate(prompt: str | None, scene: Scene, background) -> tuple[Eval3DResult | None, Tensor | None]:
    """The held-out evaluation of a shapes caption, and its renders; (None, None) when ``prompt`` is None."""
    if prompt is None:
        return None, None
    return evaluate_views(scene.render_views, prompt, load_default_classifier(), background, scene)


def final_loss(history: list[dict]) -> float:
    """Mean loss over the last 10% of the logged steps (NaN without any)."""
    tail = [row["loss"] for row in history[-max(1, len(history) // 10):]]
    return sum(tail) / len(tail) if tail else math.nan


def write_outputs(config: Text3DConfig, scene: Scene, history: list[dict], skipped: int, seconds: float,
                  out_dir: Path, stop_reason: str | None = None, facts: dict | None = None) -> Text3DResult:
    """Write every output of a run that did ``len(history) + skipped`` steps; ``stop_reason`` says why it
    ended early (None: it ran all its iterations); ``facts`` (e.g. how the model was guided) go into
    metrics.json."""
    files = scene.export(out_dir)
    tt = config.turntable
    frames = render_turntable(scene.render_views, tt.frames, tt.elevation_deg, tt.size, config.background,
                              config.cameras.distance, config.cameras.fov_deg)
    turntable = save_turntable(frames, out_dir, tt.fps)
    caption = config.prompt if uses_shapes_captions(config) else None
    evaluation, renders = _evaluate(caption, scene, config.background)
    if evaluation is not None:
        (out_dir / "eval3d.json").write_text(json.dumps(evaluation.as_dict(), indent=2))
    _heldout_grid(caption, scene, torch.tensor(config.background), out_dir, renders)
    plot_curves(history, out_dir / "curves.png", title=f"{config.method.KIND} ({config.representation}): "
                                                       f"{config.prompt}")
    steps, loss = len(history) + skipped, final_loss(history)
    metrics = {"prompt": config.prompt, "method": config.method.KIND, "representation": config.representation,
               "model": config.model, **(facts or {}), "steps": steps, "iterations": config.iterations,
               "stopped": stop_reason is not None, "stop_reason": stop_reason, "skipped_steps": skipped,
               "seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(1, len(history)), 4),
               **scene.summary(), "final_loss": loss,
               "eval3d": None if evaluation is None else evaluation.as_dict(),
               "outputs": sorted(p.name for p in [*files, *turntable]) + ["heldout.png", "curves.png", "config.yaml"]}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return Text3DResult(out_dir, scene, files[0], files, turntable, scene.summary().get("num_gaussians", 0),
                        seconds, loss, skipped, evaluation, steps, stop_reason is not None)
