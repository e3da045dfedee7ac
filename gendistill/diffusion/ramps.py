"""Values annealed over training, as typed frozen config objects (a ``kind:`` key picks one in YAML)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gendistill.errors import check_range


def progress(step: int, total_steps: int) -> float:
    """Where ``step`` (0-based) lies in training: 0 at the first step, 1 at the last, clamped."""
    if total_steps <= 1:
        return 1.0
    return min(1.0, max(0.0, step / (total_steps - 1)))


@dataclass(frozen=True)
class LinearRamp:
    """A value annealed over training: ``start`` until ``start_step``, then linear, ``end`` from ``end_step``
    on. ``start == end`` is a constant."""

    KIND: ClassVar[str] = "linear"

    start: float = 1.0
    """Value up to ``start_step``."""
    end: float = 1.0
    """Value from ``end_step`` on."""
    start_step: int = 0
    """Step (0-based) where the ramp leaves ``start``."""
    end_step: int = 0
    """Step where the ramp reaches ``end`` (at least ``start_step``)."""

    def check(self, path: str) -> None:
        """UserErrors naming ``path.start_step`` / ``path.end_step`` unless ``0 <= start_step <= end_step``."""
        check_range(f"{path}.start_step", self.start_step, 0)
        check_range(f"{path}.end_step", self.end_step, self.start_step)

    def value(self, step: int) -> float:
        """The value at ``step``."""
        if step >= self.end_step:
            return self.end
        if step <= self.start_step:
            return self.start
        return self.start + (self.end - self.start) * (step - self.start_step) / (self.end_step - self.start_step)
