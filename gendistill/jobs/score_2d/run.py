"""The generic score-distillation job for 2D scenes (image latents, vector strokes): ``edit``, ``stylize`` and
``sketch`` each build a scene and a guidance and hand them here.

It is the text-to-3D job without the 3D: the same ``SceneDistillationRecipe`` on the one trainer (checkpoints,
``--resume``, the NaN policy, a clean stop), with one fixed view per step since a 2D scene ignores its cameras.
A run that is stopped or interrupted still calls ``write`` with the last state, then re-raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from gendistill.errors import check_range, key_path
from gendistill.render.cameras import stack_cameras
from gendistill.render.rig import OrbitRig
from gendistill.render.scene import Scene
from gendistill.score.base import ScoreGuidance
from gendistill.score.scene_recipe import ImagePriors, SceneDistillationRecipe, Views
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer, TrainingDiverged, TrainResult

OnStep = Callable[[int, Tensor, float], None]
"""``on_step(step, preview, loss)``: the step's render (3, H, W) in [0, 1], detached, and its loss."""


@dataclass
class Run2DConfig:
    """How long a 2D run optimises, and its checkpoints and NaN policy."""

    iterations: int = 200
    """Optimisation steps."""
    batch_size: int = 1
    """Views per step (independent noise draws of the same scene)."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many steps (and at the end); ``--resume`` continues from the newest."""
    nan_policy: Literal["raise", "skip"] = "skip"
    """A non-finite loss or gradient: skip that step (skip) or stop (raise)."""
    max_bad_steps: int = 10
    """Stop after this many skipped steps in a row."""
    preview_every: int = 0
    """Pass a decoded preview to ``on_step`` every this many steps (0: never; progress GIFs, the demo)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "iterations"), self.iterations, 1)
        check_range(key_path(path, "batch_size"), self.batch_size, 1)
        check_range(key_path(path, "checkpoint_every"), self.checkpoint_every, 0)
        check_range(key_path(path, "max_bad_steps"), self.max_bad_steps, 1)
        check_range(key_path(path, "preview_every"), self.preview_every, 0)


def fixed_views(prompt: str, size: tuple[int, int], batch: int, device: torch.device):
    """The batch function of a 2D run: the same ``batch`` views of ``prompt`` every step."""
    camera = OrbitRig(width=size[1], height=size[0]).camera(0.0, 0.0)
    views = Views(stack_cameras([camera] * batch).to(device), [prompt] * batch, None)
    return lambda step, generator: views


def run_scene_2d(scene: Scene, guidance: ScoreGuidance, prompt: str, size: tuple[int, int], config: Run2DConfig,
                 seed: int, out_dir: Path, write: Callable[[TrainResult], object], device: torch.device,
                 progress: bool = True, on_step: OnStep | None = None, resume: bool = False,
                 log: Callable[[str], None] | None = None, description: str = "score-2d"):
    """Optimise ``scene`` under ``guidance`` for ``prompt`` on the trainer; ``write(result)`` makes the outputs
    (also of a stopped run) and its value is returned."""
    background = torch.ones(3, device=device)
    recipe = SceneDistillationRecipe(scene, guidance, background, config.iterations, ImagePriors())
    own = getattr(scene, "config", None)  # a scene config may pick its optimizer (the latent scene: adam or sgd)
    optimizers = {"scene": OptimizerConfig(kind=getattr(own, "optimizer", "adam"), lr=1e-3,
                                           betas=tuple(getattr(own, "betas", (0.9, 0.999))), eps=1e-15)}
    optimizers.update({p.name: OptimizerConfig(kind="adam", lr=1e-3) for p in guidance.extra_phases()})
    trainer_config = TrainerConfig(steps=config.iterations, seed=seed, optimizers=optimizers, grad_clip=None,
                                   checkpoint_every=config.checkpoint_every, keep_checkpoints=1, log_every=1,
                                   nan_policy=config.nan_policy, max_bad_steps=config.max_bad_steps)

    def step_hook(step: int, row: dict, losses: dict) -> None:
        row.update(recipe.logged())
        every = config.preview_every
        if on_step is not None and every and (step % every == 0 or step == config.iterations):
            on_step(step, losses["scene"].outputs.rgb[0].detach(), row["scene/loss"])

    trainer = Trainer(recipe, trainer_config, out_dir, fixed_views(prompt, size, config.batch_size, device),
                      progress=progress, on_step=step_hook, on_stop=write, log=log, description=description)
    try:
        return write(trainer.fit(resume=resume))
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}; the outputs of the last good step are in {out_dir}") from None


def scene_history(result: TrainResult) -> list[dict]:
    """The scene phase's rows, 0-based, its terms unprefixed (as the curves and metrics read them)."""
    rows = []
    for row in result.history:
        if "scene/loss" not in row:
            continue
        flat = {"step": row["step"] - 1}
        flat.update({k.rpartition("/")[2]: v for k, v in row.items() if k != "step"})
        rows.append(flat)
    return rows
