"""``ns-train gendistill-sds``: score distillation with a gendistill diffusion model on a nerfstudio model.

nerfstudio finds this method through the ``nerfstudio.method_configs`` entry point (pyproject.toml). It is
wired like nerfstudio's own text-to-3D method (generfacto): a ``RandomCamerasDataManager`` draws random
orbit cameras (no images), the model renders their rays, and the loss is score distillation. What differs:

- the guidance is ``gendistill.score``'s SDS on any diffusers text-to-image folder that gendistill loads
  (default: the shipped shapes teacher, ``shapes-teacher``; a distilled student works too), with
  view-dependent prompts ("a red cube, side view") from each camera's angles, with text-to-3d's templates
  (``view_prompts``: auto, shapes or suffix);
- the model's field is ``gendistill.render.nerf``'s radiance field (nerfstudio's field components, torch
  implementations, so it trains on a CPU), volume rendered by ``render_rays`` with a fading density blob
  at the centre, as ``gendistill text-to-3d --representation nerf`` does;
- the cameras are the default orbit rig's (``gendistill.render.rig``): distance, field of view and elevation
  range of the shapes teacher's data.

Example: ``ns-train gendistill-sds --pipeline.model.prompt "a blue cube" --vis tensorboard``
(``--pipeline.model.guidance-model DIR`` for another model). It runs on the CPU where there is no CUDA
(``--machine.device-type`` defaults to cuda only where torch sees one). ``ns-train`` imports torchvision before
this module; under a CPU-only torch, ``gendistill_torchvision_shim.pth`` (installed with the package, see
``gendistill.compat._startup``) lets that import succeed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Tuple, Type

import torch
from torch import Tensor
from torch.nn import Parameter

from gendistill.compat.torchvision_ops import define_missing_torchvision_ops
from gendistill.render.cameras import DISTANCE, FOV_DEG, Camera
from gendistill.render.rig import ELEVATION_RANGE_DEG
from gendistill.errors import UserError
from gendistill.shipped import shipped_models_dir

define_missing_torchvision_ops()  # before nerfstudio: makes torchvision importable under CPU torch

try:
    from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
    from nerfstudio.data.datamanagers.random_cameras_datamanager import RandomCamerasDataManagerConfig
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import AdamOptimizerConfig
    from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
    from nerfstudio.engine.trainer import TrainerConfig
    from nerfstudio.models.base_model import Model, ModelConfig
    from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
    from nerfstudio.plugins.types import MethodSpecification
except ImportError:
    raise UserError("the gendistill-sds nerfstudio method needs nerfstudio: pip install 'gendistill[nerf]'") from None

DEFAULT_GUIDANCE_MODEL = shipped_models_dir() / "shapes-teacher"
"""The shipped shapes teacher (a diffusers folder)."""
DEFAULT_STEPS = 600
"""Training iterations of the method (and the length of the timestep schedule)."""


def shapes_camera_range() -> tuple[float, float]:
    """The shapes world's elevation range as RandomCamerasDataManager's ``vertical_rotation_range``: it draws
    the polar angle as ``arccos(-r / 90)`` for ``r`` uniform in the range, so ``r = -90 sin(elevation)``."""
    lo, hi = ELEVATION_RANGE_DEG
    return (-90.0 * math.sin(math.radians(hi)), -90.0 * math.sin(math.radians(lo)))


def camera_from_angles(vertical_deg: float, central_deg: float) -> Camera:
    """The shapes-world camera (azimuth, elevation) of a random_train_pose camera: ``vertical`` is its polar
    angle from +z (0: overhead) and ``central`` its turn about z, with azimuth 0 at central 90."""
    elevation = min(88.9, max(-88.9, 90.0 - float(vertical_deg)))
    return Camera((float(central_deg) - 90.0) % 360.0, elevation)


@dataclass
class GendistillSDSModelConfig(ModelConfig):
    """A gendistill radiance field optimised by gendistill's SDS (flat fields, so ns-train's CLI shows them)."""

    _target: Type = field(default_factory=lambda: GendistillSDSModel)
    enable_collider: bool = False
    """The renderer clips rays to the field's cube itself."""
    prompt: str = "a red sphere"
    """What to make; the view phrase of each camera is added with the ``view_prompts`` template."""
    view_prompts: str = "auto"
    """auto (the shapes caption template for a gendistill shapes model, else the suffix), shapes or suffix."""
    guidance_model: str = str(DEFAULT_GUIDANCE_MODEL)
    """Diffusers text-to-image folder (or hub id) whose score guides the field."""
    guidance_scale: float = 7.5
    """CFG scale of SDS."""
    t_start: float = 0.98
    """Largest timestep fraction at the start (SDS's decreasing schedule, as text-to-3d's default)."""
    t_end: float = 0.2
    """Largest timestep fraction at the end."""
    total_steps: int = DEFAULT_STEPS
    """Length of the timestep schedule and of the blob's fade when no trainer says otherwise."""
    architecture: str = "tensorf-vm"
    """Field architecture: hashgrid, tensorf-vm, tensorf-cp or mlp (gendistill.render.nerf)."""
    bound: float = 1.2
    """Half the side of the field's cube."""
    num_samples: int = 32
    """Samples per ray."""
    initial_density: float = 0.01
    """Density of the fresh field (an empty cube at the start)."""
    density_blob: float = 8.0
    """Peak of the density blob at the centre while training (0: off)."""
    blob_radius: float = 0.6
    """Radius of that blob."""
    blob_fraction: float = 0.5
    """The blob fades linearly to nothing over this fraction of the run."""
    seed: int = 0
    """Seed of the field, the samples' jitter and the guidance's noise."""


class GendistillSDSModel(Model):
    """Renders a gendistill radiance field along nerfstudio's rays; the loss is gendistill's SDS."""

    config: GendistillSDSModelConfig

    def populate_modules(self) -> None:
        from gendistill.backends.score_model import load_score_model
        from gendistill.config import from_dict
        from gendistill.render.nerf import FieldConfig, build_field
        from gendistill.jobs.text_to_3d.config import default_method
        from gendistill.render.scenes.nerf import BlobField, default_nerf_field, set_initial_density

        super().populate_modules()
        c = self.config
        base = default_nerf_field()
        self.field = build_field(from_dict(FieldConfig, {"architecture": c.architecture, "bound": c.bound,
                                                         "hidden_width": base.hidden_width}), seed=c.seed)
        set_initial_density(self.field, c.initial_density)
        self.trainee = BlobField(self.field, c.density_blob, c.blob_radius)
        device = self.kwargs.get("device", "cpu")
        tuned = default_method()
        method = replace(tuned, guidance_scale=c.guidance_scale,
                         timesteps=replace(tuned.timesteps, t_start=c.t_start, t_end=c.t_end))
        # a plain attribute, not a submodule: the diffusion model is frozen and stays out of checkpoints
        model = load_score_model(c.guidance_model, str(device))  # a student is guided as its card says
        self.__dict__["guidance"] = method.build(model)
        self.sample_gens: Dict[str, torch.Generator] = {}
        self.noise_gen = torch.Generator(device).manual_seed(c.seed + 1)
        self.step, self.total_steps = 0, c.total_steps

    def get_training_callbacks(self, attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        trainer = getattr(attributes, "trainer", None)
        if trainer is not None:
            self.total_steps = trainer.config.max_num_iterations
        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self.set_step,
                                 update_every_num_iters=1)]

    def set_step(self, step: int) -> None:
        """The schedules' step: the SDS timesteps and the blob's fade follow it."""
        c = self.config
        self.step = step
        fade = c.blob_fraction * self.total_steps
        self.trainee.strength.fill_(c.density_blob * max(0.0, 1.0 - step / fade) if fade > 0 else 0.0)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = {group["name"]: list(group["params"]) for group in self.field.parameter_groups()}
        return {"field_encoder": groups.get("encoder", []), "field_heads": groups["heads"]}

    def get_outputs(self, ray_bundle) -> Dict[str, Tensor]:
        from gendistill.render.nerf import render_rays

        origins, directions = ray_bundle.origins.reshape(-1, 3), ray_bundle.directions.reshape(-1, 3)
        white = origins.new_ones(3)
        if self.training:  # jittered samples through the field plus the blob
            out = render_rays(self.trainee, origins, directions, self.config.num_samples,
                              self.sample_generator(origins.device), white)
        else:
            out = render_rays(self.field, origins, directions, self.config.num_samples, None, white)
        return {"rgb": out.rgb, "accumulation": out.alpha[:, None], "depth": out.depth[:, None]}

    def sample_generator(self, device: torch.device) -> torch.Generator:
        """The generator of the samples' jitter on ``device`` (one per device, seeded once)."""
        key = str(device)
        if key not in self.sample_gens:
            self.sample_gens[key] = torch.Generator(device).manual_seed(self.config.seed + 2)
        return self.sample_gens[key]

    def view_prompts(self, batch: Dict) -> List[str]:
        """The prompt of each camera of ``batch`` (its ``vertical`` and ``central`` angles)."""
        from gendistill.jobs.text_to_3d.views import make_view_prompter, resolve_view_prompts

        c = self.config
        if "prompter" not in self.__dict__:  # auto reads the model's gendistill.json: once, not every batch
            self.__dict__["prompter"] = make_view_prompter(resolve_view_prompts(c.view_prompts, c.guidance_model))
        prompter = self.__dict__["prompter"]
        return [prompter.prompt(c.prompt, camera_from_angles(v, central))
                for v, central in zip(batch["vertical"].tolist(), batch["central"].tolist())]

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        rgb = outputs["rgb"]
        prompts = self.view_prompts(batch)
        side = math.isqrt(rgb.shape[0] // len(prompts))
        images = rgb.view(len(prompts), side, side, 3).permute(0, 3, 1, 2)
        out = self.guidance.gradient(images, prompts, self.step, self.total_steps, self.noise_gen)
        return {"sds_loss": out.loss}

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        return {}, {"img": outputs["rgb"], "accumulation": outputs["accumulation"].expand(*outputs["rgb"].shape)}


def _shapes_focal() -> float:
    """Focal length in units of the image size for the shapes world's vertical field of view."""
    return 0.5 / math.tan(math.radians(FOV_DEG) / 2)


def default_device_type() -> str:
    """nerfstudio's ``--machine.device-type`` default: cuda where there is one, else the CPU (nerfstudio's own
    default is cuda, which fails on a CPU machine)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _optimizer(lr: float, steps: int) -> dict:
    return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr * 0.3, max_steps=steps)}


gendistill_sds = MethodSpecification(
    config=TrainerConfig(
        method_name="gendistill-sds",
        steps_per_eval_batch=100,
        steps_per_eval_image=100,
        steps_per_save=200,
        max_num_iterations=DEFAULT_STEPS,
        mixed_precision=False,
        machine=MachineConfig(device_type=default_device_type()),
        pipeline=VanillaPipelineConfig(
            datamanager=RandomCamerasDataManagerConfig(
                train_resolution=64, eval_resolution=64, num_eval_angles=8, radius_mean=DISTANCE, radius_std=0.0,
                focal_range=(_shapes_focal(), _shapes_focal()), vertical_rotation_range=shapes_camera_range(),
                jitter_std=0.0),
            model=GendistillSDSModelConfig(),
        ),
        optimizers={"field_encoder": _optimizer(2e-2, DEFAULT_STEPS), "field_heads": _optimizer(5e-3, DEFAULT_STEPS)},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    ),
    description="Text to NeRF by SDS with a gendistill diffusion model (default: the shipped shapes teacher)",
)
"""The ``gendistill-sds`` method (entry point ``nerfstudio.method_configs``)."""
