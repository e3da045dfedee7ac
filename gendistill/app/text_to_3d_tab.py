"""The text-to-3D tab: score distillation of Gaussian splats, streamed while it runs, with a Stop button.

The optimisation runs in a worker thread; its ``on_step`` callback queues (step, renders, loss) for the
tab's generator handler, which yields them to the page at most a few times a second. Stop sets the
session's ``threading.Event``; the next ``on_step`` raises :class:`_Stopped`, the worker ends, and the
handler returns what was made so far. :func:`start_text_to_3d` is the only code that knows
``gendistill.text_to_3d``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from gendistill.app.models import ModelCatalog, Workspace, check_choice, check_number, check_prompt
from gendistill.errors import RunStopped, UserError

METHODS = ("sds", "vsd", "csd", "npg")
REPRESENTATIONS = ("gaussians", "nerf")
MAX_ITERATIONS = 2000
DEFAULT_ITERATIONS = 300
STREAM_EVERY_S = 0.5
PRESETS_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "text-to-3d"
log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised inside ``on_step`` when the user pressed Stop."""


@dataclass(frozen=True)
class Text3DSettings:
    prompt: str
    method: str
    representation: str
    iterations: int


def parse_settings(prompt, method, representation, iterations) -> Text3DSettings:
    """Check every input; raises a one-line UserError for the first bad one."""
    settings = Text3DSettings(check_prompt(prompt), check_choice("method", method, METHODS),
                              check_choice("representation", representation, REPRESENTATIONS),
                              check_number("iterations", iterations, 1, MAX_ITERATIONS, integer=True))
    if settings.representation == "nerf":
        raise UserError("the nerf representation is not available yet; choose gaussians")
    return settings


def start_text_to_3d(settings: Text3DSettings, model_path: Path, out_dir: Path, on_step: Callable) -> None:
    """Run ``gendistill.text_to_3d`` for these settings, writing its outputs to ``out_dir`` (blocking).

    The method's settings come from its preset, ``configs/text-to-3d/shapes-<method>.yaml`` (the class defaults
    when the presets are not there); the page sets the model (the teacher), representation and iterations."""
    from gendistill.config import load_config
    from gendistill.text_to_3d import Text3DConfig, run_text_to_3d

    preset = PRESETS_DIR / f"shapes-{settings.method}.yaml"
    if preset.is_file():
        config = load_config(Text3DConfig, preset)
    else:
        config = load_config(Text3DConfig, None, [f"method.kind={settings.method}"])
    config = replace(config, model=str(model_path), representation=settings.representation,
                     iterations=settings.iterations, progress=False)
    run_text_to_3d(settings.prompt, config, out_dir, progress=False, on_step=on_step)


Runner = Callable[[Text3DSettings, Path, Path, Callable], None]


@dataclass
class _Progress:
    """What the worker has sent so far."""

    steps: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    renders: object = None
    step: int = 0
    outcome: str | None = None
    """None while running, then "done", "stopped" or "error"."""
    message: str = ""
    """The error, or a note on a finished run."""


def _renders_image(images):
    """The step's renders, (B, 3, H, W) in [0, 1], as one PIL image (a row of up to 4); None before any."""
    from gendistill.render.images import make_grid, to_pil

    if images is None:
        return None
    images = images.detach().float().cpu()
    return to_pil(make_grid(images, columns=min(4, len(images))))


def _loss_frame(progress: _Progress):
    import pandas as pd

    return pd.DataFrame({"step": progress.steps, "loss": progress.losses})


DOWNLOADS = ("scene.ply", "turntable.gif", "turntable.mp4", "metrics.json", "heldout.png", "curves.png",
             "config.yaml")
"""What a run leaves in its folder (run_text_to_3d's outputs) that the page offers for download."""


def _outputs(out_dir: Path) -> tuple[str | None, str | None, list[str]]:
    """(splat PLY, turntable GIF, files to download) that the run left in ``out_dir``."""
    files = [out_dir / name for name in DOWNLOADS if (out_dir / name).is_file()]
    ply, gif = out_dir / "scene.ply", out_dir / "turntable.gif"
    return (str(ply) if ply.is_file() else None), (str(gif) if gif.is_file() else None), [str(p) for p in files]


class Text3DJobs:
    """Running jobs by session, so that Stop (and a closed page) can end them."""

    def __init__(self, catalog: ModelCatalog, workspace: Workspace, runner: Runner = start_text_to_3d):
        self.catalog, self.workspace, self.runner = catalog, workspace, runner
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def stop(self, session: str | None) -> bool:
        with self._lock:
            event = self._stops.get(session or "")
        if event is not None:
            event.set()
        return event is not None

    def run(self, settings: Text3DSettings, session: str | None):
        """Start the job; yield (progress, out_dir) after each batch of steps and once more at the end."""
        if self.catalog.teacher is None:
            raise UserError("text-to-3D needs a teacher model; start the demo with --teacher DIR")
        key, stop, updates, progress = session or "", threading.Event(), queue.Queue(), _Progress()
        with self._lock:
            if key in self._stops:
                raise UserError("a text-to-3D run of this session is still going; press Stop or wait for it")
            self._stops[key] = stop
        thread = None
        try:
            out_dir = self.workspace.new_job_dir(session, "text-to-3d")
            model_path = self.catalog.entry(self.catalog.teacher).path
            thread = threading.Thread(target=self._work, args=(settings, model_path, out_dir, stop, updates),
                                      name="text-to-3d", daemon=True)
            thread.start()
            while progress.outcome is None:
                self._drain(updates, progress, thread)
                yield progress, out_dir
        finally:
            stop.set()  # a closed page (GeneratorExit) or an error here ends the worker too
            if thread is not None:
                thread.join(timeout=60)
            with self._lock:
                self._stops.pop(key, None)

    def _work(self, settings: Text3DSettings, model_path: Path, out_dir: Path, stop: threading.Event,
              updates: queue.Queue) -> None:
        """The worker thread: run the job, queueing each step and then how it ended."""

        def on_step(step, images, loss):
            if stop.is_set():
                raise _Stopped
            updates.put(("step", int(step), images, None if loss is None else float(loss)))

        try:
            self.runner(settings, model_path, out_dir, on_step)
            updates.put(("done", ""))
        except _Stopped:
            updates.put(("stopped", ""))
        except RunStopped as err:  # the run wrote its last good scene, then gave up
            updates.put(("done", str(err)))
        except UserError as err:
            updates.put(("error", str(err)))
        except Exception as err:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("text-to-3D run failed")
            updates.put(("error", f"the run failed ({type(err).__name__}); see the server log"))

    @staticmethod
    def _drain(updates: queue.Queue, progress: _Progress, thread: threading.Thread) -> None:
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


def _status(progress: _Progress, settings: Text3DSettings) -> str:
    done = f"step {progress.step + 1} of {settings.iterations}" if progress.steps else ""
    loss = f" · loss {progress.losses[-1]:.4g}" if progress.losses else ""
    if progress.outcome == "stopped":
        return (f"**Stopped** at {done or 'the start'}{loss}: the renders and loss so far are shown "
                "(a stopped run writes no 3D file)")
    if progress.outcome == "done":
        return f"**Done**: {settings.method} · {settings.iterations} iterations{loss}"
    return f"Running: {done}{loss}" if done else "Loading the model…"


def build_text_to_3d_tab(jobs: Text3DJobs) -> None:
    """The tab's components, its ``text_to_3d`` endpoint and the Stop button (call inside ``gr.Blocks``)."""
    def handle(prompt, method, representation, iterations, request: gr.Request):
        try:
            settings = parse_settings(prompt, method, representation, iterations)
            yield gr.skip(), None, "Loading the model…", None, None, None  # clear the last run's results
            for progress, out_dir in jobs.run(settings, request.session_hash if request else None):
                if progress.outcome is None:
                    yield (_renders_image(progress.renders), _loss_frame(progress), _status(progress, settings),
                           gr.skip(), gr.skip(), gr.skip())
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        if progress.outcome == "error":
            raise gr.Error(progress.message, print_exception=False)
        if progress.message:
            gr.Warning(progress.message)
        ply, gif, files = _outputs(out_dir)
        yield (_renders_image(progress.renders), _loss_frame(progress), _status(progress, settings), ply, gif,
               files if ply else None)

    def stop(request: gr.Request):
        ended = jobs.stop(request.session_hash if request else None)
        return "stopping…" if ended else "nothing is running"

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompt = gr.Textbox(label="Prompt", placeholder="a red cube", max_length=200, lines=1,
                                elem_id="t3d-prompt")
            method = gr.Radio(list(METHODS), value="sds", label="Method",
                              info="sds: DreamFusion · vsd: ProlificDreamer · csd: classifier score · "
                                   "npg: negative prompt guidance")
            representation = gr.Radio(list(REPRESENTATIONS), value="gaussians", label="Representation",
                                      info="nerf comes in a later release")
            iterations = gr.Slider(1, MAX_ITERATIONS, value=DEFAULT_ITERATIONS, step=1, precision=0,
                                   label="Iterations", elem_id="t3d-iterations")
            with gr.Row():
                run = gr.Button("Make 3D", variant="primary", elem_id="t3d-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="t3d-stop")
            status = gr.Markdown("Type a prompt and press Make 3D.", label="Status", elem_id="t3d-status")
            loss = gr.LinePlot(x="step", y="loss", label="Loss", height=220, elem_id="t3d-loss")
        with gr.Column(scale=3):
            renders = gr.Image(label="Renders (latest step)", type="pil", format="png", height=260,
                               elem_id="t3d-renders", elem_classes=["pixelated", "fill"], interactive=False)
            scene = gr.Model3D(label="Gaussian splats (drag to orbit)", height=360, elem_id="t3d-scene")
            with gr.Row():
                turntable = gr.Image(label="Turntable", type="filepath", height=200, interactive=False,
                                     elem_id="t3d-turntable", elem_classes=["fill"])
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="t3d-files")

    run.click(handle, [prompt, method, representation, iterations],
              [renders, loss, status, scene, turntable, files], api_name="text_to_3d",
              concurrency_id="compute", concurrency_limit=1, preprocess=False)  # raw values, checked here
    stop_button.click(stop, None, [status], api_name="stop", queue=False)
