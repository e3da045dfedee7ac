"""``gendistill image-to-3d``: a 3D scene from one image by Isotropic3D's SDS (Liu et al. 2024,
arXiv:2403.10395; code pkunliu/Isotropic3D): the image is reduced to its CLIP embedding, and every view of
the scene is pulled toward what an image- and camera-conditioned teacher expects of that embedding from that
view's camera. Nothing compares a render with the image, unless the baseline's reference loss is on.

It runs on text-to-3D's machinery: the same ``SceneDistillationRecipe``, scenes (Gaussians with
densification, or a NeRF), trainer settings, camera rig, outputs (``write_outputs``: scene.ply, turntable,
held-out views, metrics.json, curves.png), ``config.yaml`` and ``checkpoints/`` (``--resume``). It adds
``input.png`` (the image as the run saw it) and, in metrics.json, the image, the reference loss and, when
``evaluate_caption`` names the object, the held-out IoU's spread across azimuths.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from gendistill.backends.image_camera_model import ImageCameraModel
from gendistill.backends.open_clip_model import ClipImageEncoder
from gendistill.config import check_config, save_config
from gendistill.devices import pick_device
from gendistill.errors import UserError
from gendistill.jobs.image_to_3d.config import Image3DConfig
from gendistill.jobs.text_to_3d.config import Text3DConfig
from gendistill.jobs.text_to_3d.outputs import Text3DResult, write_outputs
from gendistill.jobs.text_to_3d.run import OnStep, _flat_row, trainer_config
from gendistill.jobs.text_to_3d.views import camera_features, training_cameras
from gendistill.render.cameras import Camera, stack_cameras
from gendistill.render.images import load_image, save_png
from gendistill.score.reference_view import ReferenceViewLoss
from gendistill.score.scene_recipe import ImagePriors, SceneDistillationRecipe, Views
from gendistill.shipped import resolve_model_name
from gendistill.train.trainer import Trainer, TrainingDiverged, TrainResult


def validate(image: str, config: Image3DConfig) -> Tensor:
    """Every user error before any model loads: the config's checks, the image (read here), the caption."""
    check_config(config)
    config.scene.check_installed()
    if config.evaluate_caption:
        from gendistill.jobs.text_to_3d.evaluate3d import caption_scene

        caption_scene(config.evaluate_caption)
    teacher = Path(resolve_model_name(config.model))
    if not teacher.is_dir():
        raise UserError(f"model {config.model!r} is not a folder or shipped model (e.g. shapes-image-teacher)")
    return load_image(image, "IMAGE")


def clip_folder(config: Image3DConfig) -> Path:
    """``config.clip``, else the encoder the teacher's gendistill.json names."""
    name = config.clip
    if not name:
        card = Path(resolve_model_name(config.model)) / "gendistill.json"
        name = json.loads(card.read_text()).get("image_encoder", "") if card.is_file() else ""
    if not name:
        raise UserError(f"{config.model} does not name its image encoder; set clip=<open_clip folder>")
    return Path(resolve_model_name(name))


def reference_camera(config: Image3DConfig, size: tuple[int, int]) -> Camera:
    c = config.cameras
    return Camera(config.reference.azimuth_deg, config.reference.elevation_deg, c.distance, c.fov_deg,
                  width=size[1], height=size[0])


def view_sampler(config: Image3DConfig, size: tuple[int, int], device: torch.device):
    """``batch_size`` cameras from the rig (after the reference camera when its loss is on); no prompts."""
    first = [reference_camera(config, size)] if config.reference.weight > 0 else []

    def sample(step: int, generator: torch.Generator) -> Views:
        cams = first + training_cameras(config, config.batch_size, generator, size)
        return Views(stack_cameras(cams).to(device), [""] * len(cams), camera_features(cams).to(device))
    return sample


def _build(config: Image3DConfig, image: Tensor):
    device = pick_device(config.device)
    model = ImageCameraModel.load(resolve_model_name(config.model), device)
    encoder = ClipImageEncoder.load(clip_folder(config), device)
    if encoder.embed_dim != model.embed_dim:
        raise UserError(f"the image encoder's embedding has {encoder.embed_dim} dims, the teacher reads "
                        f"{model.embed_dim}; use the encoder the teacher was trained with")
    guidance = config.method.build(model, encoder.embed_images(image[None])[0])
    if config.reference.weight > 0:
        guidance = ReferenceViewLoss(guidance, image, config.reference.weight)
    size = model.image_size() if config.resolution is None else (config.resolution, config.resolution)
    scene = config.scene.build(torch.Generator().manual_seed(config.seed), device, config.iterations)
    priors = ImagePriors(config.optim.tv_weight, config.optim.grad_blur_px)
    background = torch.tensor(config.background, device=device)
    return SceneDistillationRecipe(scene, guidance, background, config.iterations, priors), size, device


def outputs_config(config: Image3DConfig) -> Text3DConfig:
    """The text-to-3D config ``write_outputs`` reads: this run's scene, cameras and turntable, with the
    evaluation caption as the prompt (shapes template when there is one, so it is evaluated)."""
    template = "shapes" if config.evaluate_caption else "suffix"
    cameras = dataclasses.replace(config.cameras, view_prompts=template)
    return Text3DConfig(prompt=config.evaluate_caption, model=config.model, method=config.method, scene=config.scene,
                        iterations=config.iterations, batch_size=config.batch_size, resolution=config.resolution,
                        cameras=cameras, optim=config.optim, run=config.run, background=config.background,
                        turntable=config.turntable, seed=config.seed, progress=config.progress, device=config.device)


def add_metrics(out_dir: Path, config: Image3DConfig, result: Text3DResult) -> None:
    """metrics.json gains the input image, the reference loss and the IoU's spread over the held-out views."""
    path = out_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update(image=config.image, reference_loss_weight=config.reference.weight, input="input.png")
    if result.evaluation is not None:
        ious = torch.tensor(result.evaluation.per_view_iou, dtype=torch.float64)
        metrics["iou_std_over_views"] = round(float(ious.std(unbiased=False)), 4)
    path.write_text(json.dumps(metrics, indent=2))


def run_image_to_3d(image: str | Path, config: Image3DConfig, out_dir: str | Path, progress: bool = True,
                    on_step: OnStep | None = None, resume: bool = False,
                    log: Callable[[str], None] | None = None) -> Text3DResult:
    """Make a scene of the object in ``image`` and write every output to ``out_dir`` (``resume``: continue
    from the newest readable checkpoint there). A run that ends early writes its outputs, then re-raises."""
    config = dataclasses.replace(config, image=str(image))
    picture = validate(str(image), config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    save_png(picture, out_dir / "input.png")
    recipe, size, device = _build(config, picture)
    shown = outputs_config(config)

    def write(result: TrainResult) -> Text3DResult:
        history = [_flat_row(row) for row in result.history if "scene/loss" in row]
        written = write_outputs(shown, recipe.scene, history, result.skipped_updates, result.seconds, out_dir,
                                result.stopped)
        add_metrics(out_dir, config, written)
        return written

    def step_hook(step: int, row: dict, losses: dict) -> None:
        row.update(recipe.logged())
        if on_step is not None:
            on_step(step, losses["scene"].outputs.rgb.detach(), row["scene/loss"])

    trainer = Trainer(recipe, trainer_config(config, []), out_dir, view_sampler(config, size, device),
                      progress=progress and config.progress, on_step=step_hook, on_stop=write, log=log,
                      description=f"image-to-3d ({config.scene.KIND})")
    try:
        return write(trainer.fit(resume=resume))
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err}; the outputs of the last good step are in {out_dir}") from None
