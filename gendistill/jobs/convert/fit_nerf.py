"""``gendistill fit-nerf``: fit a radiance field to multi-view images on the one trainer.

The run folder gets ``field.safetensors``, ``metrics.json`` (PSNR on held-out views), ``renders.png``
(held-out ground truth above the field's renders), ``curves.png`` (loss and held-out PSNR over the run), the
resolved ``config.yaml`` and ``checkpoints/`` (``resume`` continues exactly). A run that ends early (Ctrl-C,
divergence, an exception from ``on_step``) writes the same outputs from its last state, with the reason in
``metrics.json["stopped"]``, then re-raises.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gendistill.config import save_config
from gendistill.convert.data import MultiViewData, load_transforms, shapes_views
from gendistill.convert.fit import FIELD_PHASE, NerfFitRecipe, field_optimizer
from gendistill.convert.measure import field_psnr, psnr, render_views
from gendistill.errors import UserError
from gendistill.jobs.convert.config import FitNerfConfig
from gendistill.jobs.convert.training import RecipeRun, clear_checkpoints, train_recipe
from gendistill.render.images import make_grid, save_png
from gendistill.render.nerf import RadianceField, build_field, save_field
from gendistill.render.plots import plot_curves
from gendistill.run_dir import prepare_out_dir
from gendistill.train.trainer import OnStep, TrainResult


@dataclass(frozen=True)
class NerfJobResult:
    """What a NeRF job wrote and measured."""

    out_dir: Path
    metrics: dict
    """The content of ``metrics.json``."""
    train: TrainResult | None
    """The trainer's result (None when the run had no steps)."""


def fit_data(config: FitNerfConfig, prompt: str | None, data_dir: str | None) -> tuple[MultiViewData, MultiViewData]:
    """Training and held-out views of a shapes caption or a transforms.json folder."""
    if (prompt is None) == (data_dir is None):
        raise UserError("give exactly one of --prompt CAPTION (shapes world) or --data DIR (transforms.json)")
    if prompt is not None:
        generator = torch.Generator().manual_seed(config.seed)
        train = shapes_views(prompt, config.views, generator, config.resolution)
        return train, shapes_views(prompt, config.holdout_views, generator, config.resolution)
    data = load_transforms(data_dir)
    if len(data) < 2:
        raise UserError(f"{data_dir} needs at least 2 frames (training and held-out)")
    every = max(2, len(data) // config.holdout_views)
    held = torch.arange(len(data)) % every == every - 1
    return data.subset(torch.nonzero(~held)[:, 0]), data.subset(torch.nonzero(held)[:, 0])


def run_fit_nerf(config: FitNerfConfig, out: str | Path, prompt: str | None = None, data_dir: str | None = None,
                 progress: bool = True, resume: bool = False, on_step: OnStep | None = None,
                 log: Callable[[str], None] | None = None) -> NerfJobResult:
    """Fit a field to a caption's renders or a transforms.json folder and write the run folder (see the module
    docstring); ``log`` receives the resume and stop notices."""
    train, holdout = fit_data(config, prompt, data_dir)
    out = prepare_out_dir(out)
    save_config(config, out / "config.yaml")
    if not resume:
        clear_checkpoints(out)
    field = build_field(config.field, seed=config.seed)
    recipe = NerfFitRecipe(field, train, config.fit)
    run = RecipeRun(recipe, config.fit.steps, FIELD_PHASE, field_optimizer(), f"fit {config.field.architecture}")
    samples = config.fit.num_samples

    def write(result: TrainResult) -> NerfJobResult:
        return _write_outputs(config, field, train, holdout, result, out)

    def on_stop(result: TrainResult) -> None:
        write(result)
        if log is not None:
            log(f"stopped ({result.stopped}) after {result.step} steps; wrote the outputs of that state to {out}")

    result = train_recipe(run, config.trainer, config.seed, out, resume=resume, progress=progress,
                          eval_fn=lambda step: {"psnr_holdout": field_psnr(field, holdout, samples)},
                          on_step=on_step, on_stop=on_stop, log=log)
    return write(result)


def _write_outputs(config: FitNerfConfig, field: RadianceField, train: MultiViewData, holdout: MultiViewData,
                   result: TrainResult, out: Path) -> NerfJobResult:
    """field.safetensors, metrics.json, renders.png and curves.png of the field's current state."""
    samples = config.fit.num_samples
    save_field(field, out / "field.safetensors")
    renders = render_views(field, holdout, samples)
    metrics = {"architecture": config.field.architecture, "psnr_holdout": psnr(renders, holdout.images),
               "psnr_train": field_psnr(field, train.subset(slice(0, 8)), samples), "steps": result.step,
               "seconds": result.seconds, "train_views": len(train), "holdout_views": len(holdout),
               "skipped_updates": result.skipped_updates, "stopped": result.stopped,
               "resumed_from": str(result.resumed_from) if result.resumed_from else None}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_png(make_grid(torch.cat([holdout.images, renders]), columns=len(holdout)), out / "renders.png")
    plot_curves(result.history, out / "curves.png", title=f"fit-nerf {config.field.architecture}")
    return NerfJobResult(out, metrics, result)
