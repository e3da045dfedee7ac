"""One trainer for every recipe, on accelerate: every optimisation in the project runs here.

Per phase an optimizer (or one per parameter group, as gsplat's densification strategies need); phases run
in the recipe's order, each its declared number of times per step. Every random draw of a step comes from a
generator seeded by (seed, step, phase, repeat, micro-batch, rank), and torch's global generator is seeded
from the same coordinates, so a resumed run replays exactly what an uninterrupted one would. Data
parallelism averages gradients across processes (gloo on CPU, NCCL on GPU) and broadcasts rank 0's weights at
the start.

A non-finite loss or gradient stops the run or skips the update (``nan_policy``). A run that ends early (the
first Ctrl-C finishes the step; an exception from ``on_step``, a crash, divergence) writes a checkpoint when
it stopped between steps, calls ``on_stop`` with what it has (jobs write their outputs there), then re-raises.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gendistill.errors import RunStopped
from gendistill.recipe import Loss, Phase, Recipe, Update
from gendistill.train import parallel
from gendistill.train.checkpoint import (TrainState, apply_checkpoint, latest_checkpoint, read_newest_readable,
                                         save_checkpoint)
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.ema import EMA, warmed_up_decay
from gendistill.train.optimizers import build_optimizers, optimizer_parameters, set_learning_rates
from gendistill.train.stopping import StopRequest, deferred_interrupt

BatchFn = Callable[[int, torch.Generator], Any]
EvalFn = Callable[[int], dict[str, float]]
OnStep = Callable[[int, dict, dict[str, Loss]], None]
"""``on_step(step, row, losses)`` after every step: the 0-based step, its logged terms and the last loss of
each phase (``loss.outputs`` carries renders for a live view). An exception it raises stops the run."""


class TrainingDiverged(RunStopped):
    """A loss or gradient became NaN or infinite; the message names the step, phase and last good checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    step: int
    """Steps completed."""
    history: list[dict]
    checkpoint: Path | None
    """The newest checkpoint (None when none was written)."""
    seconds: float
    stopped: str | None = None
    """Why the run ended early ("interrupted", "diverged", an exception's name), None when it ran every step."""
    skipped_updates: int = 0
    """Updates skipped for a non-finite loss or gradient (nan_policy skip)."""
    resumed_from: Path | None = None


def step_generator(seed: int, *coords: int, device="cpu") -> torch.Generator:
    """A generator whose stream depends only on ``seed`` and the step coordinates."""
    return torch.Generator(device).manual_seed(_mix(seed, *coords))


def _mix(seed: int, *coords: int) -> int:
    mixed = np.random.SeedSequence([seed, *coords]).generate_state(2, dtype=np.uint32)
    return int(mixed[0]) << 31 ^ int(mixed[1])


class Trainer:
    def __init__(self, recipe: Recipe, config: TrainerConfig, out_dir: str | Path, batch_fn: BatchFn,
                 eval_fn: EvalFn | None = None, accelerator=None, progress: bool = True, on_step: OnStep | None = None,
                 on_stop: Callable[[TrainResult], None] | None = None, log: Callable[[str], None] | None = None,
                 description: str = "train"):
        from accelerate import Accelerator

        self.recipe, self.config, self.batch_fn, self.eval_fn = recipe, config, batch_fn, eval_fn
        self.on_step, self.on_stop, self.log, self.description = on_step, on_stop, log, description
        self.out_dir = Path(out_dir)
        # autocast is the trainer's own (below): accelerate's state is one per process, so a mixed-precision
        # setting there would forbid a later run at another precision in the same process (the demo, tests)
        self.accelerator = accelerator or Accelerator()
        self.device = self.accelerator.device
        self.modules = recipe.modules()
        for module in self.modules.values():
            module.to(self.device)
        self.phases: list[Phase] = recipe.phases()
        name = recipe.ema_module()
        self.ema = EMA(self.modules[name], config.ema_decay) if (name and config.ema_decay) else None
        parallel.prepare_sharding(self)  # fsdp: shards the modules and the EMA, rebuilds self.phases
        self.optimizers = {p.name: build_optimizers(p, self._optimizer_config(p.name)) for p in self.phases}
        self.counters = {"skipped": 0, "bad_in_a_row": 0, **{f"updates/{p.name}": 0 for p in self.phases}}
        self.scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" and self.device.type == "cuda" \
            else None
        self.progress = progress and self.accelerator.is_main_process
        self.stop_request = StopRequest()
        self.resumed_from: Path | None = None
        self._between_steps = True

    def _optimizer_config(self, phase: str) -> OptimizerConfig:
        return self.config.optimizers.get(phase, OptimizerConfig())

    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / "checkpoints"

    def flat_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer keyed ``phase.group`` (the checkpoint's names)."""
        return {f"{phase}.{group}": opt for phase, groups in self.optimizers.items() for group, opt in groups.items()}

    # --- the loop -----------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        start = time.perf_counter()
        state = self._resume() if resume else TrainState(0, [])
        parallel.sync_initial_weights(self)
        cuda = range(torch.cuda.device_count()) if self.config.seed_global_rng else []
        with torch.random.fork_rng(devices=cuda, enabled=self.config.seed_global_rng), \
                deferred_interrupt(self.stop_request):
            try:
                self._loop(state)
            except BaseException as err:  # noqa: BLE001 - re-raised once the checkpoint and outputs are written
                self._stop(state, err, start)
                raise
        return self._result(state, start, latest_checkpoint(self.checkpoint_root), None)

    def _loop(self, state: TrainState) -> None:
        bar = tqdm(total=self.config.steps, initial=state.step, desc=self.description, disable=not self.progress)
        try:
            for step in range(state.step, self.config.steps):
                self._between_steps = False
                row, losses = self._train_step(step)
                self._between_steps = True
                state.step = step + 1
                self._after_step(state, row, losses, bar)
        finally:
            bar.close()

    def _after_step(self, state: TrainState, row: dict, losses: dict[str, Loss], bar) -> None:
        done = state.step
        if self.ema is not None:
            decay = warmed_up_decay(self.config.ema_decay, done - 1) if self.config.ema_warmup else None
            self.ema.update(self.modules[self.recipe.ema_module()], decay)
        if done % self.config.log_every == 0 or done == self.config.steps:
            state.history.append(row)
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "step"}, refresh=False)
        if self.on_step is not None:
            self.on_step(done - 1, row, losses)
        if self.eval_fn is not None and self._due(done, self.config.eval_every):
            state.history.append({"step": done, **self._evaluate(done)})
        if self._due(done, self.config.checkpoint_every):
            self._save(state)
        if self.stop_request.is_set():
            raise KeyboardInterrupt

    def _due(self, done: int, every: int) -> bool:
        return done == self.config.steps or (every > 0 and done % every == 0)

    def _train_step(self, step: int) -> tuple[dict, dict[str, Loss]]:
        row: dict = {"step": step + 1}
        losses: dict[str, Loss] = {}
        for p_index, phase in enumerate(self.phases):
            for repeat in range(phase.updates_per_step):
                terms, losses[phase.name] = self._update(phase, step, p_index, repeat)
                row.update({f"{phase.name}/{k}": v for k, v in terms.items()})
        return row, losses

    def _update(self, phase: Phase, step: int, p_index: int, repeat: int) -> tuple[dict[str, float], Loss]:
        optimizers = self.optimizers[phase.name]
        self._zero_grad(optimizers)
        accumulation = self.config.grad_accumulation
        terms: dict[str, float] = {}
        loss = None
        for micro in range(accumulation):
            coords = (step, p_index, repeat, micro, self.accelerator.process_index)
            generator = step_generator(self.config.seed, *coords)
            if self.config.seed_global_rng:
                torch.manual_seed(_mix(self.config.seed, *coords, 1))
            batch = self.batch_fn(step, generator)
            with self._autocast():
                loss = self.recipe.loss(batch, phase.name, step, generator)
            if not self._finite(loss.total):
                return self._bad_update(phase, step, f"loss became {loss.total.detach().item()}", optimizers, loss)
            scaled = loss.total / accumulation
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for key, value in {"loss": loss.total.detach().item(), **loss.terms}.items():
                terms[key] = terms.get(key, 0.0) + value / accumulation
        if not self._step_optimizers(phase, step, optimizers):
            return self._bad_update(phase, step, "a gradient became non-finite", optimizers, loss)
        self.counters["bad_in_a_row"] = 0
        self.recipe.after_update(Update(phase.name, step, optimizers, loss))
        return terms, loss

    def _autocast(self):
        """Autocast at ``mixed_precision`` on the trainer's device (a no-op for "no")."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.mixed_precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _zero_grad(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        for module in self.modules.values():
            module.zero_grad(set_to_none=True)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def _bad_update(self, phase: Phase, step: int, what: str, optimizers, loss: Loss) -> tuple[dict, Loss]:
        """Raise (nan_policy raise, or too many skips in a row) or skip this update with its gradients."""
        self._zero_grad(optimizers)
        self.counters["skipped"] += 1
        self.counters["bad_in_a_row"] += 1
        limit = self.config.max_bad_steps
        if self.config.nan_policy == "raise" or self.counters["bad_in_a_row"] >= limit:
            last = latest_checkpoint(self.checkpoint_root)
            kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
            skipped = "" if self.config.nan_policy == "raise" else f" ({limit} updates in a row skipped)"
            raise TrainingDiverged(f"{what} at step {step + 1} in phase '{phase.name}'{skipped}; {kept}")
        return {"skipped": 1.0}, loss

    def _step_optimizers(self, phase: Phase, step: int, optimizers: dict[str, torch.optim.Optimizer]) -> bool:
        """Average, check, clip and apply the gradients; False (nothing applied) when one is not finite."""
        params = [p for p in optimizer_parameters(optimizers) if p.grad is not None]
        parallel.average_gradients(self, params)
        norms = {}
        for name, optimizer in optimizers.items():
            if self.scaler:
                self.scaler.unscale_(optimizer)
            norms[name] = _gradient_norm(optimizer)
        if self.scaler is None and not all(math.isfinite(n) for n in norms.values()):
            return False
        cfg = self._optimizer_config(phase.name)
        update = self.counters[f"updates/{phase.name}"]
        for name, optimizer in optimizers.items():
            if self.config.grad_clip is not None:
                _clip(optimizer, self.config.grad_clip, norms[name])
            set_learning_rates(optimizer, cfg, update, step, self.config.steps)
            self.scaler.step(optimizer) if self.scaler else optimizer.step()
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # inf/NaN gradients in fp16: the scaler skipped the step
                self.counters["skipped"] += 1
        self.counters[f"updates/{phase.name}"] += 1
        return True

    def _finite(self, loss: torch.Tensor) -> bool:
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=self.device)
        parallel.sum_across_ranks(self, bad)
        return bad.item() == 0

    # --- stopping -----------------------------------------------------------------------------------

    def _stop(self, state: TrainState, err: BaseException, start: float) -> None:
        """Keep what the run made: a checkpoint when it stopped between steps, then the job's ``on_stop``."""
        reason = "interrupted" if isinstance(err, KeyboardInterrupt) else (
            "diverged" if isinstance(err, TrainingDiverged) else type(err).__name__)
        checkpoint = latest_checkpoint(self.checkpoint_root)
        saved_step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
        if self._between_steps and reason != "diverged" and state.step > saved_step:
            if parallel.is_sharded(self):  # a collective: every rank stops between the same steps
                checkpoint = parallel.save_sharded(self, state)
            elif self.accelerator.is_main_process:
                checkpoint = self._write_checkpoint(state)
        if self.on_stop is None:
            return
        try:
            self.on_stop(self._result(state, start, checkpoint, reason))
        except Exception as hook_error:  # what stopped the run matters more than a failed write
            raise err from hook_error

    def _result(self, state: TrainState, start: float, checkpoint: Path | None, stopped: str | None) -> TrainResult:
        return TrainResult(state.step, state.history, checkpoint, time.perf_counter() - start, stopped,
                           self.counters["skipped"], self.resumed_from)

    # --- evaluation and checkpoints -----------------------------------------------------------------

    def _evaluate(self, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process or parallel.is_sharded(self):  # sharded forwards are collective
            with self._evaluated_weights():
                metrics = {f"eval/{k}": v for k, v in self.eval_fn(step).items()}
        self.accelerator.wait_for_everyone()
        return metrics

    def _evaluated_weights(self):
        """The EMA's weights swapped into its module for an evaluation (``eval_on_ema``), else nothing."""
        if self.ema is None or not self.config.eval_on_ema or parallel.is_sharded(self):
            return contextlib.nullcontext()
        return self.ema.swapped_into(self.modules[self.recipe.ema_module()])

    def _write_checkpoint(self, state: TrainState) -> Path:
        state.counters = dict(self.counters)
        ema = self.ema.state_dict() if self.ema else None
        extra = self.recipe.extra_state() if hasattr(self.recipe, "extra_state") else None
        return save_checkpoint(self.checkpoint_root, state, self.modules, self.flat_optimizers(), ema,
                               self.config.keep_checkpoints, extra)

    def _save(self, state: TrainState) -> Path | None:
        if parallel.is_sharded(self):
            return parallel.save_sharded(self, state)
        path = self._write_checkpoint(state) if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        return path or latest_checkpoint(self.checkpoint_root)

    def _resume(self) -> TrainState:
        if parallel.is_sharded(self):
            return parallel.load_sharded(self)
        data, unreadable = read_newest_readable(self.checkpoint_root)
        if hasattr(self.recipe, "load_extra_state") and data.extra is not None:
            self.recipe.load_extra_state(data.extra)
        state = apply_checkpoint(data, self.modules, self.flat_optimizers(), self.ema)
        self.counters.update(state.counters or self._counters_from_step(state.step))
        self.resumed_from = data.path
        if self.log is not None:
            skipped = f" (newer, unreadable: {'; '.join(unreadable)})" if unreadable else ""
            self.log(f"resumed from {data.path.name}{skipped}")
        return state

    def _counters_from_step(self, step: int) -> dict[str, int]:
        """Checkpoints written before counters were saved: every phase ran its ratio every step."""
        return {f"updates/{p.name}": step * p.updates_per_step for p in self.phases}


def _gradient_norm(optimizer: torch.optim.Optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def _clip(optimizer: torch.optim.Optimizer, max_norm: float, norm: float) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if params:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, torch.tensor(norm))


def averaged(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one logged key, skipping rows without it (for curves)."""
    return [(row["step"], row[key]) for row in history if key in row and math.isfinite(row[key])]
