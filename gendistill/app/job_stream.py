"""What the three 3D tabs (Text to 3D, Image to 3D, Edit 3D) share on the page: a job streamed while it runs
(the latest renders, the loss curve and a status line), then its scene, animation and files.

The tab gives its ``Text3DJobs`` (the worker-thread runner), the checked settings (with ``iterations``), how to
word the finished run, and which folder files to show at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr

from gendistill.app.text_to_3d_jobs import Progress, Text3DJobs, downloads, viewed_file
from gendistill.errors import UserError

Outputs = tuple
"""(renders, loss, status, scene, animation, files): the six outputs every 3D tab's endpoint returns."""


def renders_image(images):
    """The step's renders, (B, 3, H, W) in [0, 1], as one PIL image (a row of up to 4); None before any."""
    from gendistill.render.images import make_grid, to_pil

    if images is None:
        return None
    images = images.detach().float().cpu()
    return to_pil(make_grid(images, columns=min(4, len(images))))


def loss_frame(progress: Progress):
    import pandas as pd

    return pd.DataFrame({"step": progress.steps, "loss": progress.losses})


def status_line(progress: Progress, iterations: int, done_as: str, has_scene: bool = False) -> str:
    """Running / Stopped / Done, with the step and the latest loss; ``done_as`` words a finished run."""
    done = f"step {progress.step + 1} of {iterations}" if progress.steps else ""
    loss = f" · loss {progress.losses[-1]:.4g}" if progress.losses else ""
    if progress.outcome == "stopped":
        shown = "the scene so far is shown" if has_scene else "the renders and loss so far are shown"
        return f"**Stopped** at {done or 'the start'}{loss}: {shown}"
    if progress.outcome == "done":
        return f"**Done**: {done_as} · {iterations} iterations{loss}"
    return f"Running: {done}{loss}" if done else "Loading the model…"


def stream_job(jobs: Text3DJobs, settings, session: str | None, done_as: str, representation: str = "gaussians",
               animation: str = "turntable.gif") -> Iterator[Outputs]:
    """Clear the last run's results, stream the job's progress, then show the scene (the viewer's file for
    ``representation``), the ``animation`` GIF and every file; user errors become the page's error line."""
    try:
        yield gr.skip(), None, "Loading the model…", None, None, None
        for progress, out_dir in jobs.run(settings, session):
            if progress.outcome is None:
                yield (renders_image(progress.renders), loss_frame(progress),
                       status_line(progress, settings.iterations, done_as), gr.skip(), gr.skip(), gr.skip())
    except UserError as err:
        raise gr.Error(str(err), print_exception=False) from None
    if progress.outcome == "error":
        raise gr.Error(progress.message, print_exception=False)
    if progress.message:
        gr.Warning(progress.message)
    scene, gif = viewed_file(out_dir, representation), Path(out_dir) / animation
    yield (renders_image(progress.renders), loss_frame(progress),
           status_line(progress, settings.iterations, done_as, scene is not None),
           str(scene) if scene else None, str(gif) if gif.is_file() else None, downloads(out_dir) or None)


def stop_handler(jobs: Text3DJobs) -> Callable:
    """The Stop button's handler for ``jobs`` (gradio passes the request to a parameter annotated gr.Request)."""
    def stop(request: gr.Request):
        return "stopping…" if jobs.stop(request.session_hash if request else None) else "nothing is running"
    return stop
