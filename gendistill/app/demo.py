"""The gendistill demo: a Gradio app with tabs for few-step generation, text to 3D, image editing, image to 3D
and editing the 3D scene made in the page.

Safe to put in front of many users: one queue (one compute job at a time, a bounded waiting line), every
input checked with a message in the page, model choices are server-side names (never paths), outputs live in
a per-session temporary folder that is deleted when the page closes, nothing outside gradio's own cache is
served (``allowed_paths=[]``), the model folders are blocked outright, it binds to 127.0.0.1 and sharing is
off unless asked for.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from gendistill.app.edit_tab import build_edit_tab
from gendistill.app.generation_tab import build_generation_tab
from gendistill.app.models import ASSETS_DIR, ModelCatalog, Workspace, discover_models
from gendistill.app.scene_jobs import start_edit_3d, start_image_to_3d
from gendistill.app.scene_tabs import build_edit_3d_tab, build_image_to_3d_tab
from gendistill.app.text_to_3d_jobs import Runner, Text3DJobs, start_text_to_3d
from gendistill.app.text_to_3d_tab import CSS as TEXT_TO_3D_CSS
from gendistill.app.text_to_3d_tab import build_text_to_3d_tab

QUEUE_SIZE = 16
"""Requests that may wait in the queue; more are refused with "queue is full"."""
TITLE = "gendistill demo"
CSS = """
.pixelated img { image-rendering: pixelated; }
.fill img { width: 100%; height: 100%; object-fit: contain; }
""" + TEXT_TO_3D_CSS
"""Small images (the shapes world is 64x64) are shown enlarged, with sharp pixels; the 3D view's background."""
INTRO = ("**gendistill**: few-step students distilled from a diffusion teacher (progressive, LCM, DMD2), "
         "text-to-3D by score distillation (SDS, VSD, CSD, NPG, structure-aware SDS), image editing by score "
         "distillation (LUSD), image to 3D (Isotropic3D) and 3D editing localised by attention (GSEditPro). "
         "Everything runs on this server's CPU or GPU.")


@dataclass(frozen=True)
class DemoOptions:
    """How to start the demo (``gendistill demo``'s options)."""

    models: tuple[str, ...] = ()
    """Extra diffusers pipeline folders (or shipped models' short names), beside those found in ``assets_dir``."""
    teacher: str | None = None
    """The teacher folder (default: the model without a distillation recipe, e.g. shapes-teacher)."""
    assets_dir: Path | None = ASSETS_DIR
    """Folder scanned for pipeline folders (those with ``model_index.json``); None: scan nothing."""
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str = "cpu"


def build_demo(catalog: ModelCatalog, workspace: Workspace, runner: Runner = start_text_to_3d,
               image_runner: Runner = start_image_to_3d, edit3d_runner: Runner = start_edit_3d):
    """The Blocks app, queued (call ``.launch`` on it, or use :func:`launch`); the runners run each 3D tab's job
    (tests pass fakes)."""
    jobs = Text3DJobs(catalog, workspace, runner)
    image_jobs = Text3DJobs(catalog, workspace, image_runner, kind="image-to-3d")
    edit3d_jobs = Text3DJobs(catalog, workspace, edit3d_runner, kind="edit-3d")
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        if not catalog.names:
            gr.Markdown("**No models found.** Start the demo with `--model DIR` (a diffusers pipeline folder).")
        with gr.Tabs():
            with gr.Tab("Few-step generation", id="generate", elem_id="tab-generate"):
                build_generation_tab(catalog)
            with gr.Tab("Text to 3D", id="text_to_3d", elem_id="tab-text-to-3d"):
                build_text_to_3d_tab(jobs)
            with gr.Tab("Edit", id="edit", elem_id="tab-edit"):
                build_edit_tab(catalog, workspace)
            with gr.Tab("Image to 3D", id="image_to_3d", elem_id="tab-image-to-3d"):
                build_image_to_3d_tab(image_jobs, workspace)
            with gr.Tab("Edit 3D", id="edit_3d", elem_id="tab-edit-3d"):
                build_edit_3d_tab(edit3d_jobs, workspace)

        def leave(request: gr.Request):
            session = request.session_hash if request else None
            for each in (jobs, image_jobs, edit3d_jobs):
                each.stop(session)
            workspace.drop_session(session)

        demo.unload(leave)
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return demo


def make_catalog(options: DemoOptions) -> ModelCatalog:
    entries, teacher = discover_models(options.assets_dir, list(options.models), options.teacher)
    return ModelCatalog(entries, teacher, options.device)


def launch(options: DemoOptions, block: bool = True, runner: Runner = start_text_to_3d, **runners: Runner):
    """Start the server; returns (demo, url). With ``block`` it serves until interrupted. ``runners``:
    ``image_runner`` and ``edit3d_runner`` of :func:`build_demo`."""
    catalog = make_catalog(options)
    workspace = Workspace()
    atexit.register(workspace.cleanup)
    demo = build_demo(catalog, workspace, runner, **runners)
    _, url, share_url = demo.launch(
        server_name=options.host, server_port=options.port, share=options.share, prevent_thread_lock=True,
        allowed_paths=[], blocked_paths=[str(e.path) for e in catalog.entries.values()], show_error=False,
        quiet=not block, css=CSS, footer_links=["api"], ssr_mode=False, mcp_server=False,
        max_file_size="1mb", enable_monitoring=False)
    if block:
        print(f"gendistill demo on {share_url or url} with {len(catalog.names)} models "
              f"(teacher: {catalog.teacher or 'none'}); Ctrl-C stops it")
        try:
            demo.block_thread()
        finally:
            workspace.cleanup()
    return demo, url
