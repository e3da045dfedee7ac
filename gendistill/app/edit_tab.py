"""The Edit tab: upload an image (or render a shapes object), type a target prompt, see before and after.

The page's layout and its ``shapes_source`` and ``edit`` endpoints; what runs is in ``edit_jobs.py``.
"""

from __future__ import annotations

import gradio as gr

from gendistill.app.edit_jobs import (DEFAULT_EDIT_ITERATIONS, EDIT_METHODS, MAX_EDIT_ITERATIONS, edit_downloads,
                                      image_tensor, parse_edit_settings, run_demo_edit, shapes_render)
from gendistill.app.models import ModelCatalog, Workspace, check_number
from gendistill.errors import UserError


def _pil(image):
    from gendistill.render.images import to_pil

    return to_pil(image)


def _captions() -> list[str]:
    from gendistill.domains.shapes import all_scenes, caption

    return [caption(scene) for scene in all_scenes()]


def build_edit_tab(catalog: ModelCatalog, workspace: Workspace) -> None:
    """The tab's components and endpoints (call inside ``gr.Blocks``); edits use the demo's teacher."""
    def pick(caption, azimuth):
        try:
            render = shapes_render(caption, check_number("azimuth", azimuth, 0, 360))
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return _pil(render), caption

    def edit(image, prompt, source_prompt, method, iterations, request: gr.Request):
        try:
            settings = parse_edit_settings(prompt, source_prompt, method, iterations)
            source = image_tensor(image)
            if catalog.teacher is None:
                raise UserError("no teacher model: start the demo with --teacher DIR")
            out_dir = workspace.new_job_dir(request.session_hash if request else None, "edit")
            result = run_demo_edit(settings, source, catalog.entry(catalog.teacher).path, out_dir)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        status = (f"**Done**: {settings.method}, {result.steps} iterations, {result.seconds:.1f} s "
                  f"(mask from the word {result_word(out_dir)!r})")
        return (_pil(result.edited), str(out_dir / "before_after.png"), _pil(result.mask[None].expand(3, -1, -1)),
                status, edit_downloads(out_dir))

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            source = gr.Image(label="Image to edit", type="pil", format="png", height=220, elem_id="edit-source",
                              elem_classes=["pixelated", "fill"], sources=["upload", "clipboard"])
            with gr.Accordion("…or start from a shapes render", open=True):
                with gr.Row():
                    caption = gr.Dropdown(_captions(), value="a red cube", label="Object", elem_id="edit-caption")
                    azimuth = gr.Slider(0, 360, value=30, step=5, label="Azimuth", elem_id="edit-azimuth")
                use = gr.Button("Use this render", elem_id="edit-use-render")
            source_prompt = gr.Textbox(label="What the image shows (source prompt)", placeholder="a red cube",
                                       max_length=200, elem_id="edit-source-prompt")
            prompt = gr.Textbox(label="What it should show (target prompt)", placeholder="a blue cube",
                                max_length=200, elem_id="edit-prompt")
            method = gr.Radio(list(EDIT_METHODS), value="lusd", label="Method", elem_id="edit-method",
                              info="lusd: localized update (mask + filtered, normalised DDS) · dds: delta denoising "
                                   "score · sds: plain score distillation (settings: configs/edit/)")
            iterations = gr.Slider(1, MAX_EDIT_ITERATIONS, value=DEFAULT_EDIT_ITERATIONS, step=1, precision=0,
                                   label="Iterations", elem_id="edit-iterations")
            run = gr.Button("Edit", variant="primary", elem_id="edit-run")
            status = gr.Markdown("Pick an image, type a target prompt and press Edit.", elem_id="edit-status")
        with gr.Column(scale=3):
            before_after = gr.Image(label="Before · after · mask", type="filepath", height=240, interactive=False,
                                    elem_id="edit-before-after", elem_classes=["pixelated", "fill"])
            with gr.Row():
                edited = gr.Image(label="Edited", type="pil", format="png", height=200, interactive=False,
                                  elem_id="edit-edited", elem_classes=["pixelated", "fill"])
                mask = gr.Image(label="Where it may change (mask)", type="pil", format="png", height=200,
                                interactive=False, elem_id="edit-mask", elem_classes=["pixelated", "fill"])
            files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="edit-files")

    use.click(pick, [caption, azimuth], [source, source_prompt], api_name="shapes_source")
    run.click(edit, [source, prompt, source_prompt, method, iterations], [edited, before_after, mask, status, files],
              api_name="edit", concurrency_id="compute", concurrency_limit=1)


def result_word(out_dir) -> str:
    """The word the mask followed, from the run's metrics."""
    import json

    return json.loads((out_dir / "metrics.json").read_text()).get("mask_word", "")
