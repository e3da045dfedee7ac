"""Image edits of the demo (no gradio here): the settings, a shapes render to start from, and the run.

The settings are those of ``gendistill edit --method shapes-edit-<method>`` with the demo's teacher and the
page's iteration count as overrides; :func:`run_demo_edit` is the only code here that runs the edit job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gendistill.app.models import check_choice, check_number, check_prompt
from gendistill.errors import UserError
from gendistill.shipped import shipped_configs_dir

EDIT_METHODS = ("lusd", "dds", "sds")
MAX_EDIT_ITERATIONS = 1000
DEFAULT_EDIT_ITERATIONS = 200
MAX_IMAGE_SIDE = 1024
"""Uploaded images larger than this on a side are refused (the edit itself runs at the model's size)."""
EDIT_FILES = ("edited.png", "before_after.png", "mask.png", "curves.png", "metrics.json", "config.yaml")


@dataclass(frozen=True)
class EditSettings:
    """The Edit tab's inputs, checked."""

    prompt: str
    source_prompt: str
    method: str
    iterations: int


def parse_edit_settings(prompt, source_prompt, method, iterations) -> EditSettings:
    """Check every input; a one-line UserError for the first bad one."""
    return EditSettings(check_prompt(prompt, "target prompt"),
                        check_prompt(source_prompt, "source prompt", required=False),
                        check_choice("method", method, EDIT_METHODS),
                        check_number("iterations", iterations, 1, MAX_EDIT_ITERATIONS, integer=True))


def image_tensor(image) -> Tensor:
    """An uploaded image (PIL or an H x W x 3/4 array) as (3, H, W) in [0, 1]; a UserError when there is none
    or it is too large."""
    import numpy as np

    if image is None:
        raise UserError("upload an image or pick a shapes render first")
    array = np.array(image.convert("RGB") if hasattr(image, "convert") else image)  # a writable copy
    if array.ndim != 3 or array.shape[2] not in (3, 4) or max(array.shape[:2]) > MAX_IMAGE_SIDE:
        raise UserError(f"the image must be RGB and at most {MAX_IMAGE_SIDE} pixels a side")
    rgb = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()
    return rgb / 255.0 if array.dtype == np.uint8 else rgb.clamp(0, 1)


def shapes_render(caption: str, azimuth_deg: float, elevation_deg: float = 20.0) -> Tensor:
    """The ray caster's render of a shapes caption ("a red cube") from the given view, (3, 64, 64)."""
    from gendistill.domains.shapes import parse_caption, render_batch
    from gendistill.render.rig import OrbitRig

    try:
        scene = parse_caption(caption)
    except (UserError, ValueError) as err:
        raise UserError(str(err)) from None
    camera = OrbitRig(width=64, height=64).camera(float(azimuth_deg), float(elevation_deg))
    return render_batch([scene], [camera]).rgb[0]


def edit_config(settings: EditSettings, model_path: Path):
    """The ``EditConfig`` of ``gendistill edit --method shapes-edit-<method> --set model=... --set
    run.iterations=...`` (the class defaults when the presets are not installed)."""
    from gendistill.jobs.score_2d.edit import load_edit_config

    preset = shipped_configs_dir() / "edit" / f"shapes-edit-{settings.method}.yaml"
    overrides = [f"model={model_path}", f"run.iterations={settings.iterations}", "progress=false",
                 "run.checkpoint_every=0"]
    return load_edit_config(preset if preset.is_file() else None, overrides)


def run_demo_edit(settings: EditSettings, image: Tensor, model_path: Path, out_dir: Path):
    """Run the edit (blocking) and return its ``EditResult``."""
    from gendistill.jobs.score_2d.edit import run_edit

    return run_edit(image, settings.prompt, edit_config(settings, model_path), out_dir,
                    source_prompt=settings.source_prompt, progress=False)


def edit_downloads(out_dir: Path) -> list[str]:
    """The files an edit left, the images first."""
    return [str(out_dir / name) for name in EDIT_FILES if (out_dir / name).is_file()]
