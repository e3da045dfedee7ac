"""Running a NeRF recipe (field fit, PVD, splat fit) on the one trainer, as the NeRF jobs and benchmarks do.

The fields' volume renderer draws its jitter from the trainer's CPU generator, so these runs stay on the CPU
(as they always have): the trainer gets a CPU accelerator.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gendistill.jobs.convert.config import TrainerSection
from gendistill.recipe import Recipe
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import EvalFn, OnStep, Trainer, TrainResult


class EnoughTraining(Exception):
    """Raise it from an ``on_step`` hook to end a run early as wanted (a benchmark reached its target):
    :func:`train_recipe` then returns the result so far instead of raising."""


@dataclass(frozen=True)
class RecipeRun:
    """What to run: the recipe (it provides ``batch(step, generator)``), how long, and its phase's optimizer."""

    recipe: Recipe
    """A NeRF recipe; its ``batch(step, generator)`` is the trainer's batch function."""
    steps: int
    """Trainer steps (the recipe config's ``steps``)."""
    phase: str
    """The recipe's one phase."""
    optimizer: OptimizerConfig
    """Settings of that phase's optimizers (the rates come from its parameter groups)."""
    description: str = "train"
    """The progress bar's label."""


def trainer_config(section: TrainerSection, run: RecipeRun, seed: int) -> TrainerConfig:
    """The TrainerConfig of ``run``; evaluation every tenth of the run unless ``section.eval_every`` says."""
    eval_every = section.eval_every or max(1, run.steps // 10)
    return TrainerConfig(steps=run.steps, seed=seed, optimizers={run.phase: run.optimizer}, grad_clip=section.grad_clip,
                         checkpoint_every=section.checkpoint_every, keep_checkpoints=section.keep_checkpoints,
                         eval_every=eval_every, log_every=section.log_every, nan_policy=section.nan_policy,
                         max_bad_steps=section.max_bad_steps)


def clear_checkpoints(out_dir: str | Path) -> None:
    """Remove an earlier run's ``out_dir/checkpoints`` before a fresh (not resumed) run writes its own, so a
    later --resume cannot pick up a newer step of the old run."""
    shutil.rmtree(Path(out_dir) / "checkpoints", ignore_errors=True)


def train_recipe(run: RecipeRun, section: TrainerSection, seed: int, out_dir: str | Path, *, resume: bool = False,
                 progress: bool = True, eval_fn: EvalFn | None = None, on_step: OnStep | None = None,
                 on_stop: Callable[[TrainResult], None] | None = None,
                 log: Callable[[str], None] | None = None) -> TrainResult:
    """Fit ``run.recipe`` with checkpoints in ``out_dir/checkpoints`` (``resume``: continue from the newest).

    A run that ends early calls ``on_stop`` with the partial result and re-raises, except when ``on_step``
    raised :class:`EnoughTraining`: then the partial result is returned and ``on_stop`` is not called."""
    from accelerate import Accelerator

    stopped: list[TrainResult] = []

    def stop(result: TrainResult) -> None:
        stopped.append(result)
        if result.stopped != EnoughTraining.__name__ and on_stop is not None:
            on_stop(result)

    trainer = Trainer(run.recipe, trainer_config(section, run, seed), out_dir, run.recipe.batch, eval_fn,
                      accelerator=Accelerator(cpu=True), progress=progress, on_step=on_step, on_stop=stop, log=log,
                      description=run.description)
    try:
        return trainer.fit(resume=resume)
    except EnoughTraining:
        return stopped[-1]
