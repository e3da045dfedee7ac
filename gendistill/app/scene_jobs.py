"""Image-to-3D and 3D-edit jobs of the demo (no gradio here): their settings, their runs, and the scene a
3D edit starts from.

Both run like text-to-3D (``text_to_3d_jobs.Text3DJobs``: a worker thread streaming renders and loss, Stop):
:func:`start_image_to_3d` runs ``gendistill image-to-3d`` with ``configs/image-to-3d/shapes-image-to-3d.yaml``
(or its ``-reference`` baseline), :func:`start_edit_3d` runs ``gendistill edit-3d`` with
``configs/edit-3d/shapes-edit-3d.yaml`` (or ``-unlocalised``) on the newest text-to-3D scene of the same page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gendistill.app.models import Workspace, check_number, check_prompt
from gendistill.errors import UserError
from gendistill.shipped import shipped_configs_dir

MAX_SCENE_ITERATIONS = 2000
DEFAULT_IMAGE_ITERATIONS = 300
DEFAULT_EDIT_3D_ITERATIONS = 200


@dataclass(frozen=True)
class Image3DSettings:
    """The Image-to-3D tab's inputs, checked; ``image`` is a PNG the page wrote in the job's session."""

    image: Path
    reference_loss: bool
    iterations: int


@dataclass(frozen=True)
class Edit3DSettings:
    """The 3D Edit tab's inputs, checked; ``scene`` is the PLY the edit starts from."""

    scene: Path
    prompt: str
    target: str
    localised: bool
    iterations: int


def parse_image3d_settings(image: Path | None, reference_loss, iterations) -> Image3DSettings:
    """Check every input; a one-line UserError for the first bad one."""
    if image is None:
        raise UserError("upload an image or pick a shapes render first")
    return Image3DSettings(Path(image), bool(reference_loss),
                           check_number("iterations", iterations, 1, MAX_SCENE_ITERATIONS, integer=True))


def parse_edit3d_settings(scene: Path | None, prompt, target, localised, iterations) -> Edit3DSettings:
    """Check every input; the target must be a word of the prompt (the edit's cross-attention reads it)."""
    if scene is None:
        raise UserError("make a scene in the Text to 3D tab first (the edit starts from its scene.ply)")
    prompt = check_prompt(prompt, "edit prompt")
    target = check_prompt(target, "target word").lower()
    if target not in prompt.lower().replace(",", " ").split():
        raise UserError(f"the target word {target!r} is not a word of the prompt {prompt!r}")
    return Edit3DSettings(Path(scene), prompt, target, bool(localised),
                          check_number("iterations", iterations, 1, MAX_SCENE_ITERATIONS, integer=True))


def latest_scene(workspace: Workspace, session: str | None) -> Path | None:
    """The scene.ply of the session's newest text-to-3D run (Gaussians), or None when it has made none."""
    folder = workspace.session_dir(session)
    scenes = sorted(folder.glob("text-to-3d-*/scene.ply"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return scenes[-1] if scenes else None


def _preset(kind: str, name: str) -> Path | None:
    path = shipped_configs_dir() / kind / f"{name}.yaml"
    return path if path.is_file() else None


def start_image_to_3d(settings: Image3DSettings, model_path: Path, out_dir: Path, on_step) -> None:
    """``gendistill image-to-3d IMAGE`` with the shapes preset (``-reference``: the baseline with a reference-view
    loss) and the page's iterations (blocking). The image teacher is the preset's, not the demo's teacher."""
    from gendistill.jobs.image_to_3d.config import load_image3d_config
    from gendistill.jobs.image_to_3d.run import run_image_to_3d

    name = "shapes-image-to-3d-reference" if settings.reference_loss else "shapes-image-to-3d"
    config = load_image3d_config(_preset("image-to-3d", name), [f"iterations={settings.iterations}",
                                                                 "progress=false"])
    run_image_to_3d(settings.image, config, out_dir, progress=False, on_step=on_step)


def start_edit_3d(settings: Edit3DSettings, model_path: Path, out_dir: Path, on_step) -> None:
    """``gendistill edit-3d SCENE --prompt P --target W`` with the shapes preset (``-unlocalised``: SDS on every
    Gaussian), the demo's teacher and the page's iterations (blocking)."""
    from gendistill.jobs.edit_3d.config import load_edit3d_config
    from gendistill.jobs.edit_3d.run import run_edit_3d

    name = "shapes-edit-3d" if settings.localised else "shapes-edit-3d-unlocalised"
    config = load_edit3d_config(_preset("edit-3d", name), [f"model={model_path}", f"iterations={settings.iterations}",
                                                           "progress=false"])
    run_edit_3d(settings.scene, settings.prompt, settings.target, config, out_dir, progress=False, on_step=on_step)
