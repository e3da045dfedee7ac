"""What an edit-3d run leaves in its folder, at the end and also when it is stopped: the edited ``scene.ply``,
``before_after.gif`` (the original and the edit turning side by side), ``relevance.png`` (the localisation
views: renders, the target word's attention, the selected Gaussians in magenta), ``curves.png`` and
``metrics.json`` (``config.yaml`` and ``checkpoints/`` are written as the run goes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gendistill.jobs.text_to_3d.turntable import render_turntable, save_turntable
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import GaussianParams, GaussianRenderer
from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.score.localised_edit import LocalisedEditRecipe
from gendistill.train.trainer import TrainResult

HIGHLIGHT = (1.0, 0.0, 1.0)
"""The colour of the selected Gaussians in relevance.png."""


@dataclass(frozen=True)
class Edit3DResult:
    """What an edit wrote and measured."""

    out_dir: Path
    ply: Path
    """The edited Gaussians (3DGS layout)."""
    params: GaussianParams
    """The edited Gaussians."""
    original: GaussianParams
    """The scene before the edit."""
    selected: Tensor
    """Which Gaussians the edit could change at the end, (N,) bool."""
    seconds: float
    steps: int
    stopped: bool


@torch.no_grad()
def highlighted(renderer: GaussianRenderer, params: GaussianParams, selected: Tensor, cameras: Cameras,
                background: Tensor) -> Tensor:
    """Renders (C, 3, H, W) with the selected Gaussians in ``HIGHLIGHT`` and the others in their colours, faded."""
    colours = 0.4 * params.base_colors + 0.6
    colours[selected] = torch.tensor(HIGHLIGHT, device=colours.device)
    out = renderer.render_features(params, cameras, torch.cat([colours, torch.ones_like(colours[:, :1])], dim=1))
    return out[:, :3] + (1 - out[:, 3:]) * background.to(out)[None, :, None, None]


def _relevance_png(recipe: LocalisedEditRecipe, out_dir: Path, size: tuple[int, int], background: Tensor) -> Path:
    """relevance.png: a column per localisation view; rows: render, attention (when localised), selection."""
    scene = recipe.scene
    localiser = recipe.localiser
    if localiser is not None:
        cameras = localiser.cameras
        renders, maps = localiser.attention(scene, -2)
        rows = [renders.cpu(), maps.expand(-1, 3, -1, -1).cpu()]
    else:
        from gendistill.render.rig import orbit

        cameras = orbit(8, 20.0, width=size[1], height=size[0]).to(background.device)
        rows = [scene.render_views(cameras, background)[0].cpu()]
    rows.append(highlighted(scene.inner.renderer, scene.params, scene.selected, cameras, background).cpu())
    return save_png(make_grid(torch.cat(rows).clamp(0, 1), columns=len(cameras)), out_dir / "relevance.png")


def _before_after(recipe: LocalisedEditRecipe, config, out_dir: Path) -> list[Path]:
    scene, tt, cams = recipe.scene, config.turntable, config.cameras

    def original_views(cameras: Cameras, background: Tensor) -> tuple[Tensor, Tensor]:
        out = scene.inner.renderer.render(scene.original, cameras.to(background.device), background.to(
            scene.original.means.device))
        return out.rgb, out.alpha

    frames = [render_turntable(views, tt.frames, tt.elevation_deg, tt.size, config.background, cams.distance,
                               cams.fov_deg) for views in (original_views, scene.render_views)]
    return save_turntable(torch.cat(frames, dim=-1), out_dir, tt.fps, name="before_after")


def write_outputs(config, recipe: LocalisedEditRecipe, history: list[dict], result: TrainResult, out_dir: Path,
                  size: tuple[int, int]) -> Edit3DResult:
    """Write every output of the run (``config`` is its Edit3DConfig); see the module docstring."""
    scene = recipe.scene
    background = torch.tensor(config.background, device=scene.params.means.device)
    files = scene.export(out_dir)
    turntable = _before_after(recipe, config, out_dir)
    _relevance_png(recipe, out_dir, size, background)
    plot_curves(history, out_dir / "curves.png", title=f"edit-3d: {config.prompt} (target: {config.target})")
    metrics = {"prompt": config.prompt, "target": config.target, "method": config.method.KIND,
               "localised": config.localisation.enabled, "model": config.model, "steps": result.step,
               "iterations": config.iterations, "stopped": result.stopped is not None, "stop_reason": result.stopped,
               "skipped_steps": result.skipped_updates, "seconds": round(result.seconds, 2),
               "seconds_per_step": round(result.seconds / max(1, len(history)), 4), **scene.summary(),
               "outputs": sorted([*(p.name for p in files + turntable), "relevance.png", "curves.png", "config.yaml"])}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    params = scene.params
    return Edit3DResult(out_dir, files[0], params, scene.original, scene.selected.detach().cpu().clone(),
                        result.seconds, result.step, result.stopped is not None)
