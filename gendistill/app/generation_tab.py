"""The few-step generation tab: the chosen model beside the teacher, same prompt and seed, with NFE and time.

:func:`run_comparison` does the work without any UI (tests and the handler call it); :func:`build_generation_tab`
lays out the controls and wires the ``generate`` API endpoint.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import gradio as gr

from gendistill.app.models import ModelCatalog, check_choice, check_flag, check_number, check_prompt
from gendistill.diffusion.samplers import SAMPLERS
from gendistill.errors import UserError

SAMPLER_CHOICES = ("auto", *SAMPLERS)
HYBRID_BASE_GUIDANCE = 1.0
"""The teacher's guidance in the diversity toggle's first step: unguided keeps its diversity (measured)."""
MAX_STEPS = 50
MAX_TEACHER_STEPS = 100
MAX_IMAGES = 4
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1
TEACHER_STEPS = 25
EXAMPLES = ["a red cube", "a blue sphere", "a green torus, side view", "a yellow cone, overhead view"]


@dataclass(frozen=True)
class GenerationSettings:
    """The tab's inputs, checked."""

    prompt: str
    negative_prompt: str | None
    model: str
    steps: int
    guidance: float
    sampler: str
    seed: int
    num_images: int
    diversity: bool
    teacher_steps: int
    negative_guidance: float = 0.0
    """A multi-CFG student's negative-prompt scale (same single pass); 0 for every other model."""


@dataclass(frozen=True)
class Panel:
    """One side of the comparison: images (PIL) and a line of what they cost."""

    images: list
    info: str


def parse_settings(catalog: ModelCatalog, prompt, negative_prompt, model, steps, guidance, sampler, seed,
                   num_images, diversity, teacher_steps, negative_guidance=0.0) -> GenerationSettings:
    """Check every input; raises a one-line UserError for the first bad one."""
    settings = GenerationSettings(
        prompt=check_prompt(prompt),
        negative_prompt=check_prompt(negative_prompt, "negative prompt", required=False) or None,
        model=catalog.entry(model).name,
        steps=check_number("steps", steps, 1, MAX_STEPS, integer=True),
        guidance=check_number("guidance", guidance, 0, MAX_GUIDANCE),
        sampler=check_choice("sampler", sampler, SAMPLER_CHOICES),
        seed=check_number("seed", seed, 0, MAX_SEED, integer=True),
        num_images=check_number("number of images", num_images, 1, MAX_IMAGES, integer=True),
        diversity=check_flag("diversity", diversity),
        teacher_steps=check_number("teacher steps", teacher_steps, 0, MAX_TEACHER_STEPS, integer=True),
        negative_guidance=check_number("negative guidance", negative_guidance, 0, MAX_GUIDANCE))
    if settings.negative_guidance > 0 and catalog.entry(model).recipe != "multi_cfg":
        raise UserError(f"negative guidance needs a multi-CFG student (e.g. shapes-multi-cfg); {settings.model} "
                        "uses the negative prompt in its ordinary guidance")
    if settings.diversity and catalog.teacher is None:
        raise UserError("the diversity toggle needs a teacher model; start the demo with --teacher DIR")
    if settings.diversity and settings.steps < 2:
        raise UserError("the diversity toggle needs at least 2 steps: the teacher takes the first, the model "
                        "the rest")
    return settings


def settings_warnings(catalog: ModelCatalog, s: GenerationSettings) -> list[str]:
    """Allowed but probably unintended choices, shown as warnings."""
    entry = catalog.entry(s.model)
    out = []
    if entry.max_steps is not None and s.steps > entry.max_steps:
        out.append(f"{entry.name} was distilled for at most {entry.max_steps} steps; {s.steps} may look worse")
    return out


def _describe(name: str, request, result, teacher_steps: int = 0) -> str:
    steps = (f"{teacher_steps} teacher step + {request.steps - teacher_steps} steps" if teacher_steps
             else f"{request.steps} step{'s' * (request.steps != 1)}")
    return (f"**{name}** · {steps} · sampler {result.sampler} · guidance {request.guidance:g}  \n"
            f"**NFE {result.nfe:g}** per image · **{result.seconds_per_image:.3f} s** per image")


class TeacherCache:
    """The teacher's last few panels by (prompt, negative prompt, seed, images, steps): switching between
    students for one prompt then costs only the student's sampling."""

    def __init__(self, size: int = 8):
        self.size, self._panels, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._panels:
                self._panels.move_to_end(key)
            return self._panels.get(key)

    def put(self, key, panel: Panel) -> None:
        with self._lock:
            self._panels[key] = panel
            while len(self._panels) > self.size:
                self._panels.popitem(last=False)


def run_comparison(catalog: ModelCatalog, s: GenerationSettings, cache: TeacherCache | None = None
                   ) -> tuple[Panel, Panel]:
    """(teacher panel, model panel) for the same prompt and seed."""
    from gendistill.backends.generation import GenerationRequest, generate
    from gendistill.render.images import to_pil

    request = GenerationRequest(prompt=s.prompt, negative_prompt=s.negative_prompt, steps=s.steps,
                                sampler=s.sampler, guidance=s.guidance, seed=s.seed, num_images=s.num_images,
                                negative_guidance=s.negative_guidance)
    model = catalog.load(s.model)
    base = None
    if s.diversity:
        base = catalog.load(catalog.teacher)
        request = replace(request, base_steps=1, base_guidance=HYBRID_BASE_GUIDANCE)
    result = generate(model, request, base=base, progress=False)
    model_panel = Panel([to_pil(x) for x in result.images], _describe(s.model, request, result, request.base_steps))
    if catalog.teacher is None:
        return Panel([], "no teacher model to compare with; start the demo with --teacher DIR"), model_panel
    if s.teacher_steps == 0:
        return Panel([], "teacher comparison is off (teacher steps 0)"), model_panel
    key = (s.prompt, s.negative_prompt, s.seed, s.num_images, s.teacher_steps)
    teacher_panel = cache.get(key) if cache is not None else None
    if teacher_panel is None:
        teacher, guidance = catalog.load(catalog.teacher), catalog.guidance_for(catalog.teacher)
        teacher_request = replace(request, steps=s.teacher_steps, sampler="auto", base_steps=0, guidance=guidance)
        t = generate(teacher, teacher_request, progress=False)
        name = catalog.teacher if "teacher" in catalog.teacher else f"{catalog.teacher} (teacher)"
        teacher_panel = Panel([to_pil(x) for x in t.images], _describe(name, teacher_request, t))
        if cache is not None:
            cache.put(key, teacher_panel)
    return teacher_panel, model_panel


def build_generation_tab(catalog: ModelCatalog) -> None:
    """The tab's components and its ``generate`` endpoint (call inside ``gr.Blocks``)."""
    default = catalog.default_choice()
    entry = catalog.entries.get(default) if default else None
    cache = TeacherCache()

    def handle(prompt, negative_prompt, model, steps, guidance, sampler, seed, num_images, diversity,
               teacher_steps, negative_guidance=0.0):
        try:
            settings = parse_settings(catalog, prompt, negative_prompt, model, steps, guidance, sampler, seed,
                                      num_images, diversity, teacher_steps, negative_guidance)
            for warning in settings_warnings(catalog, settings):
                gr.Warning(warning)
            teacher_panel, model_panel = run_comparison(catalog, settings, cache)
        except UserError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return teacher_panel.images, teacher_panel.info, model_panel.images, model_panel.info

    def on_model_change(name):
        chosen = catalog.entries.get(name)
        if chosen is None:
            return gr.update(), gr.update(), gr.update()
        steps = chosen.default_steps or (TEACHER_STEPS if not chosen.is_student else None)
        return (gr.update(value=min(steps, MAX_STEPS)) if steps else gr.update(),
                gr.update(value=chosen.guidance) if chosen.guidance is not None else gr.update(),
                gr.update(visible=chosen.recipe == "multi_cfg", value=0.0))

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            prompt = gr.Textbox(label="Prompt", placeholder="a red cube", max_length=200, lines=1,
                                elem_id="gen-prompt")
            negative = gr.Textbox(label="Negative prompt", placeholder="(optional)", max_length=200, lines=1)
            model = gr.Dropdown(choices=catalog.choices(), value=default, label="Model", elem_id="gen-model",
                                info="the shipped models and those given with --model")
            with gr.Row():
                steps = gr.Slider(1, MAX_STEPS, value=(entry.default_steps if entry else None) or 4, step=1,
                                  precision=0, label="Steps")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=(entry.guidance if entry else None) or 0.0, step=0.5,
                                     label="Guidance")
            negative_guidance = gr.Slider(0, MAX_GUIDANCE, value=0.0, step=0.25, label="Negative guidance",
                                          visible=bool(entry and entry.recipe == "multi_cfg"),
                                          info="the negative prompt's scale, in the same single network call")
            with gr.Row():
                sampler = gr.Dropdown(choices=list(SAMPLER_CHOICES), value="auto", label="Sampler",
                                      info="auto follows the model's own scheduler")
                seed = gr.Number(value=0, minimum=0, maximum=MAX_SEED, precision=0, label="Seed")
            num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, precision=0, label="Number of images")
            diversity = gr.Checkbox(value=False, label="Diversity toggle",
                                    info="hybrid sampling: the teacher takes the first step, the model the rest")
            with gr.Accordion("Teacher comparison", open=False):
                teacher_steps = gr.Slider(0, MAX_TEACHER_STEPS, value=TEACHER_STEPS, step=1, precision=0,
                                          label="Teacher steps", info="0 turns the teacher's column off")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Prompts")
        with gr.Column(scale=3):
            gallery = dict(columns=2, height="auto", object_fit="contain", format="png", elem_classes=["pixelated"])
            with gr.Row():
                with gr.Column():
                    teacher_gallery = gr.Gallery(label="Teacher", elem_id="gen-teacher", **gallery)
                    teacher_info = gr.Markdown("The teacher's images appear here.", label="Teacher info",
                                               elem_id="gen-teacher-info")
                with gr.Column():
                    model_gallery = gr.Gallery(label="Chosen model", elem_id="gen-model-images", **gallery)
                    model_info = gr.Markdown("The chosen model's images appear here.", label="Model info",
                                             elem_id="gen-model-info")

    inputs = [prompt, negative, model, steps, guidance, sampler, seed, num_images, diversity, teacher_steps,
              negative_guidance]
    outputs = [teacher_gallery, teacher_info, model_gallery, model_info]
    # preprocess=False: the handler checks the raw values itself, so that every error names its input
    gr.on([run.click, prompt.submit], handle, inputs, outputs, api_name="generate", concurrency_id="compute",
          concurrency_limit=1, preprocess=False)
    model.change(on_model_change, [model], [steps, guidance, negative_guidance], api_visibility="private",
                 queue=False)
