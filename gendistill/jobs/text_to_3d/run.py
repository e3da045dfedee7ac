"""``gendistill text-to-3d``: optimise a scene so that a text-to-image model likes every view of it.

The job reads the config, loads the model, lets the config build the guidance (``config.method.build``) and
the scene (``config.scene.build``: 3D Gaussians or a NeRF), and runs the generic score-distillation recipe
(``gendistill.score.scene_recipe``) on the one trainer: each step draws ``batch_size`` cameras from the orbit
rig with their view-dependent prompts, the scene's phase takes the guidance's gradient on its renders, and any
phase the guidance declares (VSD's fake score) trains on the same renders.

The run folder (``outputs.py``) gets the scene's files, a turntable, held-out views, metrics and curves, the
resolved ``config.yaml`` and ``checkpoints/`` (``--resume`` continues exactly). A run that is stopped (an
exception from ``on_step``, e.g. the demo's Stop), interrupted (Ctrl-C) or diverges writes its outputs too,
from the last state, with ``"stopped": true`` in metrics.json, then re-raises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from gendistill.backends.score_model import load_score_model
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config, save_config
from gendistill.devices import pick_device
from gendistill.errors import UserError
from gendistill.jobs.text_to_3d.config import Text3DConfig
from gendistill.jobs.text_to_3d.outputs import Text3DResult, write_outputs
from gendistill.jobs.text_to_3d.views import (camera_features, check_view_prompts, training_cameras, training_prompts,
                                             view_prompter)
from gendistill.render.cameras import stack_cameras
from gendistill.render.scene import Scene
from gendistill.score.scene_recipe import ImagePriors, SceneDistillationRecipe, Views
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer, TrainingDiverged, TrainResult

OnStep = Callable[[int, Tensor, float], None]
"""``on_step(step, images, loss)``: the step's renders (B, 3, H, W) in [0, 1] (detached) and its loss. An
exception it raises stops the run (after the outputs are written) and propagates."""


def validate(prompt: str, config: Text3DConfig) -> None:
    """Every user error that needs no model, before any work: the prompt, and the config's own checks
    (``check_config``: they ran at load too; this covers configs built by hand)."""
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty; describe the object, e.g. 'a red sphere'")
    check_config(config)
    config.scene.check_installed()
    check_view_prompts(prompt, config)


def trainer_config(config: Text3DConfig, extra_phases: list[str]) -> TrainerConfig:
    """The trainer of a text-to-3D run: one step per iteration, Adam on the scene (eps 1e-15, as 3DGS) and on
    the guidance's own phases. The scene's rates are its parameter groups' own (``lr`` here is only their
    fallback)."""
    optimizers = {"scene": OptimizerConfig(kind="adam", lr=1e-3, betas=tuple(config.scene.betas), eps=1e-15)}
    optimizers.update({name: OptimizerConfig(kind="adam", lr=config.optim.fake_score_lr) for name in extra_phases})
    r = config.run
    return TrainerConfig(steps=config.iterations, seed=config.seed, optimizers=optimizers, grad_clip=None,
                         checkpoint_every=r.checkpoint_every, keep_checkpoints=r.keep_checkpoints, log_every=1,
                         nan_policy=r.nan_policy, max_bad_steps=r.max_bad_steps)


def view_sampler(config: Text3DConfig, size: tuple[int, int], device: torch.device):
    """The job's batch function: ``batch_size`` cameras from the rig and one prompt per view."""
    prompter = view_prompter(config)

    def sample(step: int, generator: torch.Generator) -> Views:
        cams = training_cameras(config, config.batch_size, generator, size)
        return Views(stack_cameras(cams).to(device), training_prompts(config, cams, prompter),
                     camera_features(cams).to(device))
    return sample


def score_model(config: Text3DConfig, device: torch.device) -> TextToImageModel:
    """The config's model (and LoRA) as the run's score, guided as ``model_guidance`` says."""
    return load_score_model(config.model, str(device), config.lora, config.lora_scale,
                            cfg_on_distilled=config.model_guidance == "cfg")


def _build(config: Text3DConfig) -> tuple[SceneDistillationRecipe, tuple[int, int], torch.device, dict]:
    device = pick_device(config.device)
    model = score_model(config, device)
    size = model.image_size() if config.resolution is None else (config.resolution, config.resolution)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(config.seed)  # a LoRA fake score's initialisation draws from the global generator
        guidance = config.method.build(model)
    scene: Scene = config.scene.build(torch.Generator().manual_seed(config.seed), device, config.iterations)
    priors = ImagePriors(config.optim.tv_weight, config.optim.grad_blur_px)
    background = torch.tensor(config.background, device=device)
    recipe = SceneDistillationRecipe(scene, guidance, background, config.iterations, priors)
    return recipe, size, device, {"model_guidance": model.guidance_kind}


def run_text_to_3d(prompt: str, config: Text3DConfig, out_dir: str | Path, progress: bool = True,
                   on_step: OnStep | None = None, resume: bool = False,
                   log: Callable[[str], None] | None = None) -> Text3DResult:
    """Optimise a scene for ``prompt`` (it replaces ``config.prompt``) and write every output to ``out_dir``.

    ``progress`` and ``config.progress`` must both be on for the progress bar. ``resume`` continues from the
    newest readable checkpoint in ``out_dir/checkpoints``. A run that ends early writes the outputs of its last
    state, then re-raises (RunStopped when the loss stayed non-finite for ``run.max_bad_steps`` steps)."""
    validate(prompt, config)
    config = dataclasses.replace(config, prompt=prompt.strip())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    recipe, size, device, facts = _build(config)
    extra = [p.name for p in recipe.guidance.extra_phases()]

    def write(result: TrainResult) -> Text3DResult:
        history = [_flat_row(row) for row in result.history if "scene/loss" in row]
        return write_outputs(config, recipe.scene, history, result.skipped_updates, result.seconds, out_dir,
                             result.stopped, facts)

    def step_hook(step: int, row: dict, losses: dict) -> None:
        row.update(recipe.logged())
        if on_step is not None:
            on_step(step, losses["scene"].outputs.rgb.detach(), row["scene/loss"])

    trainer = Trainer(recipe, trainer_config(config, extra), out_dir, view_sampler(config, size, device),
                      progress=progress and config.progress, on_step=step_hook, on_stop=write, log=log,
                      description=f"text-to-3d ({config.scene.KIND})")
    try:
        return write(trainer.fit(resume=resume))
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}; the outputs of the last good step are in {out_dir}") from None


def _flat_row(row: dict) -> dict:
    """A trainer row as the run's curves and metrics read it: 0-based step, the scene's terms unprefixed."""
    flat = {"step": row["step"] - 1}
    for key, value in row.items():
        phase, _, term = key.rpartition("/")
        if key == "step":
            continue
        if phase in ("", "scene"):
            flat[term] = value
        else:  # a guidance phase's terms (VSD: fake_denoise), its loss under the phase's name
            flat[f"{phase}_loss" if term == "loss" else term] = value
    return flat
