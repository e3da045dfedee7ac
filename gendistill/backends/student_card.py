"""``gendistill.json``: how a diffusers folder is meant to be sampled, and where a student came from.

Written beside the diffusers files of every exported student (and the shapes teacher); read by ``generate``,
``eval``, the demo and the distillation report. A teacher's card holds only its guidance; a student's also
names its recipe, step counts and training provenance. This dataclass is the one reader and writer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "gendistill.json"


@dataclass(frozen=True)
class StudentCard:
    """The sampling defaults and provenance of one model folder; every field may be absent (None)."""

    recipe: str | None = None
    """Distillation recipe that made the student (dmd2, lcm, progressive); None for a teacher."""
    steps: int | None = None
    """Steps the student is meant to be sampled with."""
    max_steps: int | None = None
    """Most steps the student can take."""
    guidance: float | None = None
    """Guidance scale to sample with (0: guidance distilled in)."""
    teacher: str | None = None
    """The teacher it was distilled from (as the run's config named it)."""
    train_seconds: float | None = None
    """Wall-clock seconds of training."""
    device: str | None = None
    """torch device it was trained on."""
    threads: int | None = None
    """CPU threads torch used (CPU training)."""
    written: str | None = None
    """When the card was written (local time, ``YYYY-MM-DD HH:MM:SS``)."""
    output: str | None = None
    """What its images show when not pictures: "depth" (depth drawn as grey, a structure-aware SDS branch)."""

    @property
    def is_student(self) -> bool:
        """Whether a distillation recipe made this model."""
        return self.recipe is not None

    @staticmethod
    def read(folder: str | Path) -> StudentCard | None:
        """The card in ``folder``; None when there is none or it is not a JSON mapping. Unknown keys and values
        of the wrong type are dropped (a card written by a newer gendistill still reads)."""
        try:
            data = json.loads((Path(folder) / FILE_NAME).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        values = {f.name: _typed(f.type, data.get(f.name)) for f in dataclasses.fields(StudentCard)}
        return StudentCard(**values)

    def write(self, folder: str | Path) -> Path:
        """Write the card (set fields only) to ``folder/gendistill.json``; returns the path."""
        path = Path(folder) / FILE_NAME
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        return path

    def as_dict(self) -> dict:
        """The set fields, in field order."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _typed(annotation: str, value):
    """``value`` if it fits the field's annotation (``"int | None"`` etc.), else None."""
    if value is None or isinstance(value, bool):
        return None
    if annotation.startswith("str"):
        return value if isinstance(value, str) else None
    if annotation.startswith("int"):
        return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else None
    if annotation.startswith("float"):
        return float(value) if isinstance(value, (int, float)) else None
    return None
