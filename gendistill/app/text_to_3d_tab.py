"""The text-to-3D tab: score distillation of Gaussian splats or a NeRF, streamed while it runs, with Stop.

The page's layout and its ``text_to_3d`` and ``stop`` endpoints; what runs, and how (the settings of
``gendistill text-to-3d`` with the method's preset, worker threads, Stop), is in ``text_to_3d_jobs.py``,
which needs no gradio.
"""

from __future__ import annotations

import gradio as gr

from gendistill.app.job_stream import stop_handler, stream_job
from gendistill.app.scene_view import VIEWER_HEIGHT_PX
from gendistill.app.text_to_3d_jobs import (DEFAULT_ITERATIONS, MAX_ITERATIONS, METHODS, REPRESENTATIONS, Text3DJobs,
                                            nerf_available, parse_settings)
from gendistill.errors import UserError

SCENE_BACKGROUND = "#f2f2f2"
"""Behind the 3D view: near the white the objects were optimised against, readable in light and dark themes."""
CSS = f"#t3d-scene canvas {{ background: {SCENE_BACKGROUND} !important; }}"
"""gsplat.js paints its canvas black inline and draws the splats with alpha; this shows them over a light grey."""
MESH_CAMERA = (-60, 70, 3.5)
"""Where the mesh viewer (babylon.js, used for a NeRF's glTF mesh) starts: (alpha, beta, radius) in degrees and
world units, ~20 deg above the horizon at 3.5x the unit ball's radius, the object's front (+x) mostly in view.
gradio passes no camera to its splat viewer; ``scene_view.py`` frames the splats instead."""


def score_choices(catalog) -> list[tuple[str, str]]:
    """(label, name) of the catalog's models (those the generation tab offers), the teacher first."""
    return sorted(catalog.choices(), key=lambda c: c[1] != catalog.teacher)


def build_text_to_3d_tab(jobs: Text3DJobs) -> None:
    """The tab's components, its ``text_to_3d`` endpoint and the Stop button (call inside ``gr.Blocks``)."""
    def handle(prompt, method, representation, iterations, model=None, request: gr.Request = None):
        try:
            settings = parse_settings(prompt, method, representation, iterations, model, tuple(jobs.catalog.names))
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        yield from stream_job(jobs, settings, request.session_hash if request else None,
                              f"{settings.method} · {settings.representation}", settings.representation)

    nerf_note = "nerf: a radiance field, shown as its mesh" if nerf_available() else (
        "nerf needs pip install gendistill[nerf] on the server")
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompt = gr.Textbox(label="Prompt", placeholder="a red cube", max_length=200, lines=1,
                                elem_id="t3d-prompt")
            method = gr.Radio(list(METHODS), value="sds", label="Method",
                              info="sds: DreamFusion · vsd: ProlificDreamer · csd: classifier score · "
                                   "npg: negative prompt guidance · sds-rgbd: RGB and depth scores (HumanGaussian) "
                                   "(settings: configs/text-to-3d/)", elem_id="t3d-method")
            representation = gr.Radio(list(REPRESENTATIONS), value="gaussians", label="Representation",
                                      info=f"gaussians: 3D Gaussian splats · {nerf_note}",
                                      elem_id="t3d-representation")
            iterations = gr.Slider(1, MAX_ITERATIONS, value=DEFAULT_ITERATIONS, step=1, precision=0,
                                   label="Iterations", elem_id="t3d-iterations")
            model = gr.Dropdown(score_choices(jobs.catalog), value=jobs.catalog.teacher, label="Score model",
                                info="whose score guides the scene: the teacher (two passes a step under CFG) or a "
                                     "student, guided as it is meant to be (LCM, multi-CFG: one pass)",
                                elem_id="t3d-model")
            with gr.Row():
                run = gr.Button("Make 3D", variant="primary", elem_id="t3d-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="t3d-stop")
            status = gr.Markdown("Type a prompt and press Make 3D.", label="Status", elem_id="t3d-status")
            loss = gr.LinePlot(x="step", y="loss", label="Loss", height=220, elem_id="t3d-loss")
        with gr.Column(scale=3):
            renders = gr.Image(label="Renders (latest step)", type="pil", format="png", height=220,
                               elem_id="t3d-renders", elem_classes=["pixelated", "fill"], interactive=False)
            scene = gr.Model3D(label="3D view (drag to orbit, scroll to zoom)", height=VIEWER_HEIGHT_PX,
                               elem_id="t3d-scene", clear_color=(0.95, 0.95, 0.95, 1.0),
                               camera_position=MESH_CAMERA, interactive=False)
            with gr.Row():
                turntable = gr.Image(label="Turntable", type="filepath", height=200, interactive=False,
                                     elem_id="t3d-turntable", elem_classes=["fill"])
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="t3d-files",
                                height=200)

    run.click(handle, [prompt, method, representation, iterations, model],
              [renders, loss, status, scene, turntable, files], api_name="text_to_3d",
              concurrency_id="compute", concurrency_limit=1, preprocess=False)  # raw values, checked here
    stop_button.click(stop_handler(jobs), None, [status], api_name="stop", queue=False)
