"""``gendistill edit-3d SCENE.ply --prompt TEXT --target WORD``: edit a 3D Gaussian scene from a text prompt,
changing only what the target word is about (GSEditPro, Sun et al. 2024, arXiv 2411.10033).

The job loads the scene's Gaussians as a text-to-3D scene (``scene.init.ply``), wraps it so that only a selection
of them is optimised (``render/scenes/selective_gaussians.py``: masked updates, the pseudo-ground-truth term),
finds that selection from the model's cross-attention of the target word and refines it as the edit goes on
(``score/localised_edit.py``), and runs the generic score-distillation recipe (SDS by default, or any text-to-3D
``method``) on the one trainer with text-to-3D's cameras and view prompts. ``localisation.enabled: false`` is
plain, unlocalised score-distillation editing. The run folder is ``outputs.py``'s; ``--resume`` continues exactly;
Ctrl-C and a crash still write the outputs (``"stopped": true``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from gendistill.config import save_config
from gendistill.devices import pick_device
from gendistill.errors import UserError
from gendistill.jobs.edit_3d.config import Edit3DConfig
from gendistill.jobs.edit_3d.outputs import Edit3DResult, write_outputs
from gendistill.jobs.text_to_3d.run import OnStep, _flat_row, score_model, trainer_config, view_sampler
from gendistill.jobs.text_to_3d.run import validate as validate_text3d
from gendistill.render.gaussians import revive_clamped_colours
from gendistill.render.rig import orbit
from gendistill.render.scenes.selective_gaussians import SelectiveGaussianScene
from gendistill.score.edit_mask import WORD
from gendistill.score.localised_edit import LocalisedEditRecipe, Localiser
from gendistill.score.scene_recipe import ImagePriors, SceneDistillationRecipe
from gendistill.score.teacher import Teacher
from gendistill.train.trainer import Trainer, TrainingDiverged, TrainResult


def validate(scene_path: str | Path, prompt: str, target: str, config: Edit3DConfig) -> None:
    """Every user error that needs no model, each one line: the scene file, the prompt, the target word, the
    config's checks and text-to-3D's prompt checks."""
    if not Path(scene_path).is_file():
        raise UserError(f"no PLY file at {scene_path}")
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty; say what the scene should show, e.g. 'a green cube'")
    words = WORD.findall(prompt.lower())
    if not target or target.strip().lower() not in words:
        raise UserError(f"--target {target!r} is not a word of the prompt {prompt!r}; choose one of: "
                        f"{', '.join(words)}")
    validate_text3d(prompt, config)


def localisation_cameras(config: Edit3DConfig, size: tuple[int, int]):
    """The cameras whose renders the localiser reads: ``localisation.views`` around the scene."""
    c = config.localisation
    return orbit(c.views, c.elevation_deg, config.cameras.distance, config.cameras.fov_deg, size[1], size[0])


def _build(config: Edit3DConfig,
           selection: Tensor | None) -> tuple[LocalisedEditRecipe, tuple[int, int], torch.device]:
    device = pick_device(config.device)
    model = score_model(config, device)
    size = model.image_size() if config.resolution is None else (config.resolution, config.resolution)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(config.seed)
        guidance = config.method.build(model)
    inner = config.scene.build(torch.Generator().manual_seed(config.seed), device, config.iterations)
    revive_clamped_colours(inner.params)  # same renders; colours saturated at 0 can change again
    scene = SelectiveGaussianScene(inner, config.pseudo_gt_weight)
    if selection is not None:
        scene.select(selection)
    background = torch.tensor(config.background, device=device)
    priors = ImagePriors(config.optim.tv_weight, config.optim.grad_blur_px)
    recipe = SceneDistillationRecipe(scene, guidance, background, config.iterations, priors)
    localiser = None
    if config.localisation.enabled and selection is None:
        localiser = Localiser(Teacher(model), config.localisation, config.prompt, config.target,
                              localisation_cameras(config, size).to(device), background, config.seed)
    return LocalisedEditRecipe(recipe, localiser), size, device


def run_edit_3d(scene_path: str | Path, prompt: str, target: str, config: Edit3DConfig, out_dir: str | Path,
                progress: bool = True, resume: bool = False, log: Callable[[str], None] | None = None,
                on_step: OnStep | None = None, selection: Tensor | None = None) -> Edit3DResult:
    """Edit the Gaussians of ``scene_path`` toward ``prompt``, localised to ``target``, writing every output to
    ``out_dir``. ``selection`` (N,) bool, one per Gaussian of the file, fixes which Gaussians may change instead
    of localising them (a selection made elsewhere; the benchmark's oracle). A run that ends early writes the
    outputs of its last state, then re-raises. ``on_step`` is text-to-3D's (an exception it raises stops the run)."""
    validate(scene_path, prompt, target, config)
    init = dataclasses.replace(config.scene.init, ply=str(scene_path))
    config = dataclasses.replace(config, prompt=prompt.strip(), target=target.strip().lower(),
                                 scene=dataclasses.replace(config.scene, init=init))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    recipe, size, device = _build(config, selection)
    recipe.start()
    extra = [p.name for p in recipe.inner.guidance.extra_phases()]

    def write(result: TrainResult) -> Edit3DResult:
        history = [_flat_row(row) for row in result.history if "scene/loss" in row]
        return write_outputs(config, recipe, history, result, out_dir, size)

    def step_hook(step: int, row: dict, losses: dict) -> None:
        row.update(recipe.logged())
        if on_step is not None:
            on_step(step, losses["scene"].outputs.rgb.detach(), row["scene/loss"])

    trainer = Trainer(recipe, trainer_config(config, extra), out_dir, view_sampler(config, size, device),
                      progress=progress and config.progress, on_step=step_hook, on_stop=write, log=log,
                      description="edit-3d" + ("" if config.localisation.enabled else " (unlocalised)"))
    try:
        return write(trainer.fit(resume=resume))
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}; the outputs of the last good step are in {out_dir}") from None
