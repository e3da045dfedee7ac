"""The "Image to 3D" and "Edit 3D" tabs: a 3D scene from one image (Isotropic3D), and a text edit of the scene
the Text to 3D tab made (GSEditPro), each streamed while it runs, with Stop.

The layout and the ``image_to_3d``, ``edit_3d`` and ``stop_*`` endpoints; what runs is in ``scene_jobs.py``
(no gradio), on the job runner of the text-to-3D tab.
"""

from __future__ import annotations

import gradio as gr

from gendistill.app.edit_jobs import image_tensor, shapes_render
from gendistill.app.edit_tab import _captions, _pil
from gendistill.app.job_stream import stop_handler, stream_job
from gendistill.app.models import Workspace, check_number
from gendistill.app.scene_jobs import (DEFAULT_EDIT_3D_ITERATIONS, DEFAULT_IMAGE_ITERATIONS, MAX_SCENE_ITERATIONS,
                                       latest_scene, parse_edit3d_settings, parse_image3d_settings)
from gendistill.app.scene_view import VIEWER_HEIGHT_PX
from gendistill.app.text_to_3d_jobs import Text3DJobs
from gendistill.app.text_to_3d_tab import MESH_CAMERA
from gendistill.errors import UserError


def _session(request: gr.Request | None) -> str | None:
    return request.session_hash if request else None


def _progress_column(prefix: str, gif_label: str):
    """Renders, loss, 3D view, animation and downloads, with element ids ``<prefix>-...``."""
    renders = gr.Image(label="Renders (latest step)", type="pil", format="png", height=200, interactive=False,
                       elem_id=f"{prefix}-renders", elem_classes=["pixelated", "fill"])
    loss = gr.LinePlot(x="step", y="loss", label="Loss", height=200, elem_id=f"{prefix}-loss")
    scene = gr.Model3D(label="3D view (drag to orbit, scroll to zoom)", height=VIEWER_HEIGHT_PX,
                       elem_id=f"{prefix}-scene", clear_color=(0.95, 0.95, 0.95, 1.0), camera_position=MESH_CAMERA,
                       interactive=False)
    with gr.Row():
        animation = gr.Image(label=gif_label, type="filepath", height=200, interactive=False,
                             elem_id=f"{prefix}-animation", elem_classes=["fill"])
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id=f"{prefix}-files",
                        height=200)
    return renders, loss, scene, animation, files


def build_image_to_3d_tab(jobs: Text3DJobs, workspace: Workspace) -> None:
    """Upload an image (or render a shapes object), make its 3D scene; ``image_to_3d`` and ``stop_image_to_3d``."""
    def pick(caption, azimuth):
        try:
            return _pil(shapes_render(caption, check_number("azimuth", azimuth, 0, 360)))
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def handle(image, reference_loss, iterations, request: gr.Request):
        try:
            picture = image_tensor(image)
            path = workspace.new_job_dir(_session(request), "image-input") / "input.png"
            _pil(picture).save(path)
            settings = parse_image3d_settings(path, reference_loss, iterations)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        done_as = ("with the reference-view loss (baseline)" if settings.reference_loss
                   else "SDS from the image's CLIP embedding")
        yield from stream_job(jobs, settings, _session(request), done_as)

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            image = gr.Image(label="Image of one object", type="pil", format="png", height=200, elem_id="i3d-image",
                             elem_classes=["pixelated", "fill"], sources=["upload", "clipboard"])
            with gr.Accordion("…or start from a shapes render", open=True):
                with gr.Row():
                    caption = gr.Dropdown(_captions(), value="a yellow cone", label="Object", elem_id="i3d-caption")
                    azimuth = gr.Slider(0, 360, value=30, step=5, label="Azimuth", elem_id="i3d-azimuth")
                use = gr.Button("Use this render", elem_id="i3d-use-render")
            reference_loss = gr.Checkbox(False, label="Also fit the image from a front camera (baseline)",
                                         info="Isotropic3D uses the CLIP embedding only; the baseline adds a "
                                              "reference-view loss and overfits that view", elem_id="i3d-reference")
            iterations = gr.Slider(1, MAX_SCENE_ITERATIONS, value=DEFAULT_IMAGE_ITERATIONS, step=1, precision=0,
                                   label="Iterations", elem_id="i3d-iterations")
            with gr.Row():
                run = gr.Button("Make 3D", variant="primary", elem_id="i3d-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="i3d-stop")
            status = gr.Markdown("Pick an image and press Make 3D.", elem_id="i3d-status")
        with gr.Column(scale=3):
            renders, loss, scene, turntable, files = _progress_column("i3d", "Turntable")

    use.click(pick, [caption, azimuth], [image], api_name="image_source")
    run.click(handle, [image, reference_loss, iterations], [renders, loss, status, scene, turntable, files],
              api_name="image_to_3d", concurrency_id="compute", concurrency_limit=1)
    stop_button.click(stop_handler(jobs), None, [status], api_name="stop_image_to_3d", queue=False)


def build_edit_3d_tab(jobs: Text3DJobs, workspace: Workspace) -> None:
    """Edit the newest scene the Text to 3D tab made in this page; ``edit_3d`` and ``stop_edit_3d``."""
    def handle(prompt, target, localised, iterations, request: gr.Request):
        try:
            settings = parse_edit3d_settings(latest_scene(workspace, _session(request)), prompt, target, localised,
                                             iterations)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        done_as = f"{'localised' if settings.localised else 'unlocalised'} edit of {settings.target!r}"
        yield from stream_job(jobs, settings, _session(request), done_as, animation="before_after.gif")

    gr.Markdown("Edits the **newest scene made in the Text to 3D tab** of this page: only the Gaussians where the "
                "teacher attends to the target word change (GSEditPro's attention-based localisation).")
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompt = gr.Textbox(label="What the scene should show", placeholder="a green cube", max_length=200,
                                elem_id="e3d-prompt")
            target = gr.Textbox(label="Target word (the part to change)", placeholder="cube", max_length=40,
                                elem_id="e3d-target")
            localised = gr.Checkbox(True, label="Localise to the target word", elem_id="e3d-localised",
                                    info="off: plain SDS on every Gaussian (the unlocalised baseline)")
            iterations = gr.Slider(1, MAX_SCENE_ITERATIONS, value=DEFAULT_EDIT_3D_ITERATIONS, step=1, precision=0,
                                   label="Iterations", elem_id="e3d-iterations")
            with gr.Row():
                run = gr.Button("Edit 3D", variant="primary", elem_id="e3d-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id="e3d-stop")
            status = gr.Markdown("Make a scene in the Text to 3D tab, then describe the edit.", elem_id="e3d-status")
        with gr.Column(scale=3):
            renders, loss, scene, before_after, files = _progress_column("e3d", "Before · after")

    run.click(handle, [prompt, target, localised, iterations], [renders, loss, status, scene, before_after, files],
              api_name="edit_3d", concurrency_id="compute", concurrency_limit=1)
    stop_button.click(stop_handler(jobs), None, [status], api_name="stop_edit_3d", queue=False)
