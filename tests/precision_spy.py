"""Helpers of the mixed-precision tests: run a job's trainer in a chosen precision and record what it did.

A job builds its ``Trainer`` by the name it imported; :class:`TrainerSpy` stands in for that name, so the
real job runs unchanged while the test learns whether the trained parameters moved, which dtypes the
network layers produced (proof that autocast was on) and the trainer's loss history.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import ModuleType

import torch
from safetensors.torch import load_file
from torch import nn

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""The trainer's mixed_precision names and the dtype autocast computes in."""


def fresh_accelerate_state() -> None:
    """Forget accelerate's process-wide state: a second ``Accelerator`` with another ``mixed_precision`` (or
    ``cpu=True`` after a CUDA one) otherwise raises "AcceleratorState has already been initialized"."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def trained_parameters(trainer) -> dict[str, torch.Tensor]:
    """Copies of every parameter the trainer's modules train (requires_grad), keyed module.parameter."""
    return {f"{name}.{key}": p.detach().clone() for name, module in trainer.modules.items()
            for key, p in module.named_parameters() if p.requires_grad}


class TrainerSpy:
    """Stands in for a job module's ``Trainer``: builds the real one (with ``mixed_precision=precision`` when
    given) and records, for each ``fit``, the trained parameters that changed, the trainer's result, and the
    output dtypes of every Linear and Conv2d layer that ran meanwhile."""

    def __init__(self, real, precision: str | None = None):
        self.real, self.precision = real, precision
        self.trainers: list = []
        self.results: list = []
        self.changed: list[set[str]] = []
        self.dtypes: set[torch.dtype] = set()

    def install(self, monkeypatch, module: ModuleType) -> TrainerSpy:
        """Replace ``module.Trainer`` by this spy for the test."""
        monkeypatch.setattr(module, "Trainer", self)
        return self

    def __call__(self, recipe, config, *args, **kwargs):
        if self.precision is not None:
            config = dataclasses.replace(config, mixed_precision=self.precision)
        trainer = self.real(recipe, config, *args, **kwargs)
        self.trainers.append(trainer)
        trainer.fit = self._watched(trainer, trainer.fit)
        return trainer

    def _watched(self, trainer, fit):
        def watched_fit(*args, **kwargs):
            before = trained_parameters(trainer)
            hook = nn.modules.module.register_module_forward_hook(self._record)
            try:
                result = fit(*args, **kwargs)
            finally:
                hook.remove()
            after = trained_parameters(trainer)
            self.changed.append({k for k, v in before.items() if k not in after or not torch.equal(v, after[k])})
            self.results.append(result)
            return result
        return watched_fit

    def _record(self, module: nn.Module, args, output) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)) and isinstance(output, torch.Tensor):
            self.dtypes.add(output.dtype)

    def scaler_scales(self) -> list[float]:
        """The fp16 gradient scaler's scale of each trainer (a halved scale means skipped updates)."""
        return [t.scaler.get_scale() for t in self.trainers if t.scaler is not None]


def non_finite_terms(history: list[dict]) -> list[str]:
    """``step phase/term=value`` for every logged loss term that is NaN or infinite."""
    return [f"{row.get('step')} {key}={value}" for row in history for key, value in row.items()
            if "/" in key and isinstance(value, float) and not math.isfinite(value)]


def assert_trained(spy: TrainerSpy, precision: str) -> None:
    """Every fit finished with finite logged losses, moved some trained parameter, and ran its layers in the
    precision's dtype."""
    assert spy.results, "the job built no trainer"
    for result, changed in zip(spy.results, spy.changed):
        assert result.stopped is None and result.step > 0
        assert result.history, "no losses were logged"
        assert not non_finite_terms(result.history), non_finite_terms(result.history)
        assert changed, (f"no trained parameter changed in {result.step} steps (fp16 gradient scaler scales: "
                         f"{spy.scaler_scales()}; each halving is a skipped update)")
    assert DTYPES[precision] in spy.dtypes, f"autocast did not compute in {precision}: layer outputs {spy.dtypes}"


def differing_tensors(student: Path, teacher: Path, compressed: bool = False) -> list[str]:
    """Names of the student's tensors that differ from the teacher's or that the teacher lacks (an LCM
    student adds its guidance embedding); the student must keep every tensor of the teacher, unless it is
    ``compressed`` (a KOALA student leaves layers out)."""
    new, old = load_file(str(student)), load_file(str(teacher))
    assert compressed or old.keys() <= new.keys(), sorted(old.keys() - new.keys())[:5]
    return [k for k in new if k not in old or not torch.equal(new[k], old[k])]
