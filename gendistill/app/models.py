"""Server-side state of the demo: the models it may load, per-session output folders, and input checks.

The browser only ever names a model by its catalog name (a key of :class:`ModelCatalog`), never by a path;
outputs go to a per-session folder under one temporary root that the server creates; every value that comes
from a request is checked here and a bad one raises a :class:`~gendistill.errors.UserError` with one line that
says what is allowed (the tabs turn it into ``gr.Error``).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gendistill.backends.student_card import StudentCard
from gendistill.errors import UserError
from gendistill.shipped import resolve_model_name, shipped_models_dir

ASSETS_DIR = shipped_models_dir()
"""Where the shipped models live (``shapes-teacher``, ``shapes-<recipe>-<k>step``; package data)."""

MAX_PROMPT_CHARS = 200


# --- models -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """A diffusers pipeline folder the demo may load, and its ``gendistill.json`` card (None if it has none)."""

    name: str
    path: Path
    card: StudentCard | None = field(default=None, compare=False)

    @property
    def recipe(self) -> str | None:
        return self.card.recipe if self.card is not None else None

    @property
    def is_student(self) -> bool:
        return self.recipe is not None

    @property
    def default_steps(self) -> int | None:
        return self.card.steps if self.card is not None else None

    @property
    def max_steps(self) -> int | None:
        return self.card.max_steps if self.card is not None else None

    @property
    def guidance(self) -> float | None:
        return self.card.guidance if self.card is not None else None

    @property
    def label(self) -> str:
        """What the dropdown shows."""
        if not self.is_student:
            return self.name
        steps = self.default_steps
        return f"{self.name} ({self.recipe}" + (f", {steps} step{'s' * (steps != 1)})" if steps else ")")


def is_pipeline_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / "model_index.json").is_file()


def shows_pictures(folder: Path) -> bool:
    """Whether a pipeline folder generates pictures (not, e.g., the depth branch of structure-aware SDS)."""
    card = StudentCard.read(folder)
    return card is None or card.output in (None, "rgb")


def discover_models(assets_dir: Path | None, extra: list[str] = (), teacher: str | None = None
                    ) -> tuple[list[ModelEntry], str | None]:
    """The pipeline folders in ``assets_dir`` plus ``extra`` (each must be one: a folder or a shipped model's
    short name), and the teacher's name.

    The teacher is ``teacher`` if given (added to the list if needed), else the model without a distillation
    recipe in its ``gendistill.json`` that most students name as their teacher (then one whose name says
    "teacher"); None if every model is a student.
    """
    folders: list[Path] = []
    if assets_dir is not None and Path(assets_dir).is_dir():
        folders += sorted(p for p in Path(assets_dir).iterdir() if is_pipeline_folder(p) and shows_pictures(p))
    for item in [*extra, *([teacher] if teacher else [])]:
        path = Path(resolve_model_name(item))
        if not is_pipeline_folder(path):
            raise UserError(f"--model {item}: not a diffusers pipeline folder (no model_index.json)")
        folders.append(path)
    entries: list[ModelEntry] = []
    seen: dict[Path, str] = {}
    for folder in folders:
        resolved = folder.resolve()
        if resolved in seen:
            continue
        name, n = folder.name, 2
        while any(e.name == name for e in entries):
            name, n = f"{folder.name}-{n}", n + 1
        seen[resolved] = name
        entries.append(ModelEntry(name, resolved, StudentCard.read(folder)))
    if teacher:
        return entries, seen[Path(resolve_model_name(teacher)).resolve()]
    named = [Path(e.card.teacher).name for e in entries if e.is_student and e.card.teacher]
    candidates = sorted((e for e in entries if not e.is_student),
                        key=lambda e: (-named.count(e.name), "teacher" not in e.name))
    return entries, candidates[0].name if candidates else None


class ModelCatalog:
    """Models by name, each loaded once on first use and kept (loading is behind one lock)."""

    def __init__(self, entries: list[ModelEntry], teacher: str | None = None, device: str = "cpu"):
        self.entries = {e.name: e for e in entries}
        self.teacher = teacher
        self.device = device
        self._models: dict = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs for a dropdown, students first (fewest steps first), the teacher last."""
        order = sorted(self.entries.values(), key=lambda e: (not e.is_student, e.default_steps or 0, e.name))
        return [(e.label + (" (teacher)" if e.name == self.teacher and "teacher" not in e.name else ""), e.name)
                for e in order]

    def default_choice(self) -> str | None:
        """The model the page starts with: a DMD2 student (the shipped one-step model) if there is one, else
        the first choice (the student with the fewest steps, or the teacher)."""
        dmd = [name for _, name in self.choices() if (self.entries[name].recipe or "").startswith("dmd")]
        choices = dmd or [name for _, name in self.choices()]
        return choices[0] if choices else None

    def entry(self, name) -> ModelEntry:
        if not isinstance(name, str) or name not in self.entries:
            allowed = ", ".join(self.entries) or "(none: start the demo with --model DIR)"
            raise UserError(f"unknown model {str(name)[:60]!r}; choose one of: {allowed}")
        return self.entries[name]

    def load(self, name: str):
        """The ``TextToImageModel`` for ``name``, loading it on first use."""
        entry = self.entry(name)
        with self._lock:
            if name not in self._models:
                from gendistill.backends.loading import load_pipeline
                from gendistill.backends.text_to_image import TextToImageModel

                self._models[name] = TextToImageModel(load_pipeline(str(entry.path), device=self.device))
            return self._models[name]

    def guidance_for(self, name: str) -> float:
        """The guidance ``name`` is meant to be sampled with (its ``gendistill.json``, else the library default)."""
        from gendistill.domains.shapes.evaluation import default_guidance

        entry = self.entry(name)
        return entry.guidance if entry.guidance is not None else default_guidance(self.load(name), entry.path)


# --- per-session outputs ----------------------------------------------------------------------------------


class Workspace:
    """One temporary root; each session writes under its own folder there, deleted when the page closes (or,
    for API clients, which never close a page, ``max_age_s`` after its last job)."""

    def __init__(self, root: Path | None = None, max_age_s: float = 6 * 3600):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="gendistill-demo-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s

    def session_dir(self, session_hash: str | None) -> Path:
        # The session hash comes from the client: hash it, so it can never name a path.
        key = hashlib.sha256((session_hash or "anonymous").encode()).hexdigest()[:24]
        return self.root / key

    def new_job_dir(self, session_hash: str | None, kind: str) -> Path:
        self._drop_stale()
        session = self.session_dir(session_hash)
        path = session / f"{kind}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        os.utime(session)
        return path

    def _drop_stale(self) -> None:
        cutoff = time.time() - self.max_age_s
        for session in self.root.iterdir():
            try:
                if session.stat().st_mtime < cutoff:
                    shutil.rmtree(session, ignore_errors=True)
            except OSError:
                pass

    def drop_session(self, session_hash: str | None) -> None:
        shutil.rmtree(self.session_dir(session_hash), ignore_errors=True)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- inputs a user can get wrong --------------------------------------------------------------------------


def check_prompt(prompt, name: str = "prompt", required: bool = True) -> str:
    """The stripped prompt; an error if it is not text, empty (when required) or over the length limit."""
    if prompt is None and not required:
        return ""
    if not isinstance(prompt, str):
        raise UserError(f"{name} must be text")
    prompt = prompt.strip()
    if required and not prompt:
        raise UserError(f"{name} is empty; type what to make, e.g. 'a red cube'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"{name} is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are allowed")
    return prompt


def check_number(name: str, value, low: float, high: float, integer: bool = False) -> float | int:
    """``value`` as a number in [low, high] (a whole number if ``integer``), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name} must be a number in [{low:g}, {high:g}], got {str(value)[:40]!r}")
    if integer and value != int(value):
        raise UserError(f"{name} must be a whole number, got {value:g}")
    if not low <= value <= high:
        raise UserError(f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return int(value) if integer else float(value)


def check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {str(value)[:40]!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise UserError(f"unknown {name} {str(value)[:40]!r}; choose one of: {', '.join(choices)}")
    return value
