"""One trainer for every recipe, on accelerate.

Per phase an AdamW optimizer; phases run in the recipe's order, each its declared number of times per
step. Every random draw of a step comes from a generator seeded by (seed, step, phase, repeat, micro-batch,
rank), so a resumed run replays exactly what an uninterrupted one would. Data parallelism averages
gradients across processes (gloo on CPU, NCCL on GPU) and broadcasts rank 0's weights at the start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from gendistill.errors import RunStopped, UserError
from gendistill.train.checkpoint import TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.ema import EMA
from gendistill.recipe import Phase, Recipe

BatchFn = Callable[[int, torch.Generator], Any]
EvalFn = Callable[[int], dict[str, float]]


class TrainingDiverged(RunStopped):
    """A loss became NaN or infinite; the message names the step, phase and last good checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    step: int
    history: list[dict]
    checkpoint: Path | None
    seconds: float


def step_generator(seed: int, *coords: int, device="cpu") -> torch.Generator:
    """A generator whose stream depends only on ``seed`` and the step coordinates."""
    mixed = np.random.SeedSequence([seed, *coords]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device).manual_seed(int(mixed[0]) << 31 ^ int(mixed[1]))


class Trainer:
    def __init__(self, recipe: Recipe, config: TrainerConfig, out_dir: str | Path, batch_fn: BatchFn,
                 eval_fn: EvalFn | None = None, accelerator=None, progress: bool = True):
        from accelerate import Accelerator

        self.recipe, self.config, self.batch_fn, self.eval_fn = recipe, config, batch_fn, eval_fn
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        self.device = self.accelerator.device
        self.modules = recipe.modules()
        for module in self.modules.values():
            module.to(self.device)
        self.phases: list[Phase] = recipe.phases()
        self.optimizers = {p.name: self._optimizer(p) for p in self.phases}
        self.phase_updates = {p.name: 0 for p in self.phases}
        name = recipe.ema_module()
        self.ema = EMA(self.modules[name], config.ema_decay) if (name and config.ema_decay) else None
        self.scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None
        self.progress = progress and self.accelerator.is_main_process

    def _optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        cfg = self.config.optimizers.get(phase.name, OptimizerConfig())
        return torch.optim.AdamW(phase.parameters, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / "checkpoints"

    # --- the loop -----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        start = time.perf_counter()
        state = self._resume() if resume else TrainState(0, [])
        self._sync_initial_weights()
        bar = tqdm(total=self.config.steps, initial=state.step, desc="train", disable=not self.progress)
        checkpoint = None
        for step in range(state.step, self.config.steps):
            row = self._train_step(step)
            done = step + 1
            if self.ema is not None:
                self.ema.update(self.modules[self.recipe.ema_module()])
            if done % self.config.log_every == 0 or done == self.config.steps:
                state.history.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "step"}, refresh=False)
            if self.eval_fn is not None and self._due(done, self.config.eval_every):
                state.history.append({"step": done, **self._evaluate(done)})
            if self._due(done, self.config.checkpoint_every):
                state.step = done
                checkpoint = self._save(state)
        bar.close()
        return TrainResult(self.config.steps, state.history, checkpoint, time.perf_counter() - start)

    def _due(self, done: int, every: int) -> bool:
        return done == self.config.steps or (every > 0 and done % every == 0)

    def _train_step(self, step: int) -> dict:
        row: dict = {"step": step + 1}
        for p_index, phase in enumerate(self.phases):
            for repeat in range(phase.updates_per_step):
                terms = self._update(phase, step, p_index, repeat)
                row.update({f"{phase.name}/{k}": v for k, v in terms.items()})
        return row

    def _update(self, phase: Phase, step: int, p_index: int, repeat: int) -> dict[str, float]:
        for module in self.modules.values():
            module.zero_grad(set_to_none=True)
        accumulation = self.config.grad_accumulation
        terms: dict[str, float] = {}
        for micro in range(accumulation):
            generator = step_generator(self.config.seed, step, p_index, repeat, micro,
                                       self.accelerator.process_index)
            batch = self.batch_fn(step, generator)
            with self.accelerator.autocast():
                loss = self.recipe.loss(batch, phase.name, step, generator)
            self._check_finite(loss.total, step, phase.name)
            scaled = loss.total / accumulation
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for key, value in {"loss": loss.total.detach().item(), **loss.terms}.items():
                terms[key] = terms.get(key, 0.0) + value / accumulation
        self._step_optimizer(phase)
        self.recipe.after_update(phase.name, step)
        return terms

    def _step_optimizer(self, phase: Phase) -> None:
        optimizer = self.optimizers[phase.name]
        params = [p for p in phase.parameters if p.grad is not None]
        self._average_gradients(params)
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if self.config.grad_clip is not None and params:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self._warmup(phase.name, optimizer)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        self.phase_updates[phase.name] += 1

    def _warmup(self, name: str, optimizer: torch.optim.Optimizer) -> None:
        cfg = self.config.optimizers.get(name, OptimizerConfig())
        if cfg.warmup_steps > 0:
            scale = min(1.0, (self.phase_updates[name] + 1) / cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * scale

    def _check_finite(self, loss: torch.Tensor, step: int, phase: str) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=self.device)
        if self.accelerator.num_processes > 1:
            dist.all_reduce(bad)
        if bad.item() > 0:
            last = latest_checkpoint(self.checkpoint_root)
            kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"loss became {loss.detach().item()} at step {step + 1} in phase '{phase}'; {kept}")

    # --- data parallel ------------------------------------------------------------------------------

    def _average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        world = self.accelerator.num_processes
        if world == 1 or not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def _sync_initial_weights(self) -> None:
        if self.accelerator.num_processes == 1:
            return
        for module in self.modules.values():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    # --- evaluation and checkpoints -----------------------------------------------------------------

    def _evaluate(self, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process:
            metrics = {f"eval/{k}": v for k, v in self.eval_fn(step).items()}
        self.accelerator.wait_for_everyone()
        return metrics

    def _save(self, state: TrainState) -> Path | None:
        path = None
        if self.accelerator.is_main_process:
            ema = self.ema.state_dict() if self.ema else None
            path = save_checkpoint(self.checkpoint_root, state, self.modules, self.optimizers, ema,
                                   self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path or latest_checkpoint(self.checkpoint_root)

    def _resume(self) -> TrainState:
        path = latest_checkpoint(self.checkpoint_root)
        if path is None:
            raise UserError(f"--resume: no checkpoint in {self.checkpoint_root}")
        state = load_checkpoint(path, self.modules, self.optimizers, self.ema)
        for phase in self.phases:
            self.phase_updates[phase.name] = state.step * phase.updates_per_step
        return state


def averaged(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one logged key, skipping rows without it (for curves)."""
    return [(row["step"], row[key]) for row in history if key in row and math.isfinite(row[key])]
