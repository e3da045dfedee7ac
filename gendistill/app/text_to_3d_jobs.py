"""Text-to-3D jobs of the demo (no gradio here): the settings, the run, its outputs, and Stop.

The settings are those of ``gendistill text-to-3d --config configs/text-to-3d/shapes-<method>.yaml`` (built by
``load_text3d_config``, the command's own loader), with the page's representation and iterations and the
demo's teacher as overrides; :func:`start_text_to_3d` is the only code that runs ``gendistill.jobs.text_to_3d``.

The optimisation runs in a worker thread; its ``on_step`` callback queues (step, renders, loss) for the
tab's generator handler, which takes them at most every :data:`STREAM_EVERY_S`. Stop sets the session's
``threading.Event``; the next ``on_step`` raises :class:`Stopped`, the run writes what it has (the
text-to-3D run writes its outputs from the last state when ``on_step`` raises) and the worker ends.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gendistill.app.models import ModelCatalog, Workspace, check_choice, check_number, check_prompt
from gendistill.app.scene_view import write_viewer_copy
from gendistill.errors import RunStopped, UserError
from gendistill.shipped import shipped_configs_dir

STREAM_EVERY_S = 0.5
"""The page gets at most about two updates a second (renders and loss of the latest steps)."""
log = logging.getLogger(__name__)

METHODS = ("sds", "vsd", "csd", "npg", "sds-rgbd")
REPRESENTATIONS = ("gaussians", "nerf")
MAX_ITERATIONS = 2000
DEFAULT_ITERATIONS = 300
PRESETS_DIR = shipped_configs_dir() / "text-to-3d"
NERF_MISSING = ("the nerf representation needs nerfstudio, which this server does not have: "
                "pip install gendistill[nerf] (or choose gaussians)")
VIEWER_COPY = "viewer-scene.ply"
"""The splats framed for the page's viewer (``scene_view.py``); not offered for download."""
VIEWED = {"gaussians": ("scene.ply",), "nerf": ("scene_mesh.glb", "scene_mesh.ply")}
"""The file the 3D view shows, by representation, first found wins (glTF is y up, so a mesh stands upright)."""
DOWNLOAD_ORDER = ("scene.ply", "scene_mesh.ply", "scene_mesh.glb", "scene_mesh.obj", "field.safetensors",
                  "turntable.gif", "turntable.mp4", "metrics.json", "eval3d.json", "heldout.png", "curves.png",
                  "config.yaml")
"""What a run leaves in its folder, in the order the page lists it (anything else follows)."""


@dataclass(frozen=True)
class Text3DSettings:
    """The tab's inputs, checked."""

    prompt: str
    method: str
    representation: str
    iterations: int
    model: str | None = None
    """The catalog's model whose score guides the run (a student is guided as its card says); None: the teacher."""


def nerf_available() -> bool:
    """Whether nerfstudio (the ``nerf`` extra) can be imported here."""
    return importlib.util.find_spec("nerfstudio") is not None


def parse_settings(prompt, method, representation, iterations, model=None,
                   models: tuple[str, ...] | None = None) -> Text3DSettings:
    """Check every input (``model`` against ``models``, the catalog's names, when given); raises a one-line
    UserError for the first bad one."""
    settings = Text3DSettings(check_prompt(prompt), check_choice("method", method, METHODS),
                              check_choice("representation", representation, REPRESENTATIONS),
                              check_number("iterations", iterations, 1, MAX_ITERATIONS, integer=True),
                              None if model in (None, "") or models is None else check_choice("model", model, models))
    if settings.representation == "nerf" and not nerf_available():
        raise UserError(NERF_MISSING)
    return settings


def text3d_config(settings: Text3DSettings, model_path: Path):
    """The ``Text3DConfig`` that ``gendistill text-to-3d --config <method's preset> --set model=... --set
    scene.kind=... --set iterations=...`` builds (the class defaults plus ``method.kind`` when the presets
    are not there, e.g. an installed wheel)."""
    from gendistill.jobs.text_to_3d.config import load_text3d_config

    preset = PRESETS_DIR / f"shapes-{settings.method}.yaml"
    overrides = [f"model={model_path}", f"scene.kind={settings.representation}",
                 f"iterations={settings.iterations}", "progress=false"]
    if not preset.is_file():
        return load_text3d_config(None, [f"method.kind={settings.method}", *overrides])
    return load_text3d_config(preset, overrides)


def start_text_to_3d(settings: Text3DSettings, model_path: Path, out_dir: Path, on_step) -> None:
    """Run ``gendistill.jobs.text_to_3d`` for these settings, writing its outputs to ``out_dir`` (blocking)."""
    from gendistill.jobs.text_to_3d.run import run_text_to_3d

    run_text_to_3d(settings.prompt, text3d_config(settings, model_path), out_dir, progress=False, on_step=on_step)


def viewed_file(out_dir: Path, representation: str) -> Path | None:
    """What the 3D view shows: the framed copy of the splats, or the NeRF's mesh; None if the run left none."""
    found = next((out_dir / n for n in VIEWED[representation] if (out_dir / n).is_file()), None)
    if found is None or representation != "gaussians":
        return found
    try:
        return write_viewer_copy(found, out_dir / VIEWER_COPY)
    except (UserError, ValueError, RuntimeError):  # a file the framing cannot read: show it as it is
        return found


def downloads(out_dir: Path) -> list[str]:
    """Every file the run left, the usual ones first (never the viewer's copy)."""
    files = [p for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != VIEWER_COPY]
    rank = {name: i for i, name in enumerate(DOWNLOAD_ORDER)}
    return [str(p) for p in sorted(files, key=lambda p: (rank.get(p.name, len(rank)), p.name))]


# --- running jobs -----------------------------------------------------------------------------------------


class Stopped(Exception):
    """Raised inside ``on_step`` when the user pressed Stop (or closed the page)."""


Runner = Callable[[Text3DSettings, Path, Path, Callable], None]
"""``runner(settings, teacher_path, out_dir, on_step)`` runs one job, blocking (:func:`start_text_to_3d`)."""


@dataclass
class Progress:
    """What the worker has sent so far."""

    steps: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    renders: object = None
    """The latest step's renders, (B, 3, H, W) in [0, 1]."""
    step: int = 0
    outcome: str | None = None
    """None while running, then "done", "stopped" or "error"."""
    message: str = ""
    """The error, or a note on a finished run."""


class Text3DJobs:
    """Running jobs by session, so that Stop (and a closed page) can end them. One instance per kind of job
    (``kind`` names the job folders and the messages): text-to-3D, and the 3D tabs built like it."""

    def __init__(self, catalog: ModelCatalog, workspace: Workspace, runner: Runner, kind: str = "text-to-3d"):
        self.catalog, self.workspace, self.runner, self.kind = catalog, workspace, runner, kind
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def stop(self, session: str | None) -> bool:
        """Ask the session's run to stop; False when it has none."""
        with self._lock:
            event = self._stops.get(session or "")
        if event is not None:
            event.set()
        return event is not None

    def run(self, settings: Text3DSettings, session: str | None) -> Iterator[tuple[Progress, Path]]:
        """Start the job; yield (progress, out_dir) after each batch of steps and once more at the end."""
        if self.catalog.teacher is None:
            raise UserError(f"{self.kind} needs a teacher model; start the demo with --teacher DIR")
        key, stop, updates, progress = session or "", threading.Event(), queue.Queue(), Progress()
        with self._lock:
            if key in self._stops:
                raise UserError(f"a {self.kind} run of this session is still going; press Stop or wait for it")
            self._stops[key] = stop
        thread = None
        try:
            out_dir = self.workspace.new_job_dir(session, self.kind)
            model_path = self.catalog.entry(getattr(settings, "model", None) or self.catalog.teacher).path
            thread = threading.Thread(target=self._work, args=(settings, model_path, out_dir, stop, updates),
                                      name=self.kind, daemon=True)
            thread.start()
            while progress.outcome is None:
                _drain(updates, progress, thread)
                yield progress, out_dir
        finally:
            stop.set()  # a closed page (GeneratorExit) or an error here ends the worker too
            if thread is not None:
                thread.join(timeout=120)
            with self._lock:
                self._stops.pop(key, None)

    def _work(self, settings: Text3DSettings, model_path: Path, out_dir: Path, stop: threading.Event,
              updates: queue.Queue) -> None:
        """The worker thread: run the job, queueing each step and then how it ended."""

        def on_step(step, images, loss):
            if stop.is_set():
                raise Stopped
            updates.put(("step", int(step), images, None if loss is None else float(loss)))

        try:
            self.runner(settings, model_path, out_dir, on_step)
            updates.put(("done", ""))
        except Stopped:
            updates.put(("stopped", ""))
        except RunStopped as err:  # the run wrote its last good scene, then gave up
            updates.put(("done", str(err)))
        except UserError as err:
            updates.put(("error", str(err)))
        except Exception as err:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("%s run failed", self.kind)
            updates.put(("error", f"the run failed ({type(err).__name__}); see the server log"))


def _drain(updates: queue.Queue, progress: Progress, thread: threading.Thread) -> None:
    """Wait for an update, then take every one queued up to STREAM_EVERY_S later."""
    deadline = None
    while True:
        try:
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            item = updates.get(timeout=timeout)
        except queue.Empty:
            if deadline is not None:
                return
            if not thread.is_alive() and updates.empty():
                progress.outcome, progress.message = "error", "the run ended without a result"
                return
            continue
        if item[0] != "step":
            progress.outcome, progress.message = item
            return
        _, progress.step, images, loss = item
        if images is not None:
            progress.renders = images
        if loss is not None:
            progress.steps.append(progress.step)
            progress.losses.append(loss)
        deadline = deadline or time.monotonic() + STREAM_EVERY_S
