"""What text-to-3D draws for each training view: cameras from the orbit rig, each view's prompt, and the
camera features VSD's fake score reads.

The prompt template is ``cameras.view_prompts``: the generic suffix (``gendistill.render.view_prompts``) or
the shapes world's caption template. Only a run that uses the shapes template imports the shapes domain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gendistill.backends.loading import resolve_model
from gendistill.backends.score_model import lora_folder
from gendistill.backends.student_card import StudentCard
from gendistill.errors import UserError, check_choice
from gendistill.render.cameras import Camera
from gendistill.render.rig import OrbitRig
from gendistill.render.view_prompts import SuffixViewPrompter, ViewPrompter

if TYPE_CHECKING:
    from gendistill.jobs.text_to_3d.config import Text3DConfig

VIEW_PROMPTS = ("auto", "shapes", "suffix")
"""The values of ``cameras.view_prompts``."""


def is_shapes_model(model: str) -> bool:
    """Whether ``model`` is one of gendistill's own shapes-world models: a local diffusers folder with a
    ``gendistill.json`` (the shipped teacher and the students distilled from it, LoRA students included). A hub id
    is not."""
    folder = lora_folder(model) or resolve_model(model)
    return StudentCard.read(folder) is not None


def resolve_view_prompts(mode: str, model: str) -> str:
    """The template ``mode`` means for ``model``: "shapes" or "suffix" (``auto`` asks :func:`is_shapes_model`)."""
    check_choice("cameras.view_prompts", mode, VIEW_PROMPTS)
    if mode != "auto":
        return mode
    return "shapes" if is_shapes_model(model) else "suffix"


def make_view_prompter(template: str) -> ViewPrompter:
    """The prompter of a resolved template: ``shapes`` (imports the shapes domain) or ``suffix``."""
    if template == "shapes":
        from gendistill.domains.shapes.captions import ShapesViewPrompter

        return ShapesViewPrompter()
    check_choice("view prompt template", template, ("shapes", "suffix"))
    return SuffixViewPrompter()


def uses_shapes_captions(config: Text3DConfig) -> bool:
    """Whether the run's prompt is a shapes caption by its config (the shapes template), so that it is
    evaluated against the analytic object."""
    return resolve_view_prompts(config.cameras.view_prompts, config.model) == "shapes"


def check_view_prompts(prompt: str, config: Text3DConfig) -> None:
    """A UserError now, before any work, when the configured template cannot read ``prompt``."""
    mode = config.cameras.view_prompts
    template = resolve_view_prompts(mode, config.model)
    try:
        make_view_prompter(template).prompt(prompt, None)
    except UserError as err:
        why = f"{config.model} is a gendistill shapes model" if mode == "auto" else "the config says so"
        raise UserError(f"{err} (cameras.view_prompts={mode} uses the shapes caption template because {why}; "
                        f"set cameras.view_prompts=suffix for any other prompt)") from None


def view_prompter(config: Text3DConfig) -> ViewPrompter:
    """The run's prompter (``auto`` reads the model folder's gendistill.json: resolve it once per run)."""
    return make_view_prompter(resolve_view_prompts(config.cameras.view_prompts, config.model))


def training_prompts(config: Text3DConfig, cameras: list[Camera], prompter: ViewPrompter | None = None) -> list[str]:
    """The prompt of each view: ``config.prompt`` through the configured template (``prompter``, default
    :func:`view_prompter`), with each camera's view phrase when ``cameras.view_dependent_prompts`` is on."""
    prompter = prompter or view_prompter(config)
    dependent = config.cameras.view_dependent_prompts
    return [prompter.prompt(config.prompt, cam if dependent else None) for cam in cameras]


def training_rig(config: Text3DConfig, size: tuple[int, int]) -> OrbitRig:
    """The orbit rig of the training cameras: ``cameras`` section, images of ``size`` (height, width)."""
    c = config.cameras
    return OrbitRig(c.distance, c.fov_deg, tuple(c.elevation_range_deg), width=size[1], height=size[0])


def training_cameras(config: Text3DConfig, n: int, generator: torch.Generator, size: tuple[int, int]) -> list[Camera]:
    """``n`` cameras with uniform azimuth and elevation in the configured range (:meth:`OrbitRig.sample`)."""
    return training_rig(config, size).sample(n, generator)


def camera_features(cameras: list[Camera]) -> Tensor:
    """Flattened 4x4 camera-to-world matrices, (B, 16): what VSD's camera-conditioned fake score reads."""
    return torch.stack([cam.camtoworld.flatten() for cam in cameras])
