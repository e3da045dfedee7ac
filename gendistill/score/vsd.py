"""Variational score distillation (ProlificDreamer, Wang et al. 2023).

The gradient is DMD's: ``grad = w(t) (eps_real - eps_fake) = w(t) dm_gradient(x0, real_x0, fake_x0, sigma,
"sds")``, with the real score the teacher with CFG and the fake score a LoRA copy of the teacher that the
guidance's extra phase ``fake_score`` (``extra_phases``, ``phase_loss``) trains on the current renders
(detached) with the standard denoising loss. Several particles are simply several scenes in the batch.

The fake score is conditioned on the camera, as ProlificDreamer does (it feeds the flattened 4x4 camera-to-
world matrix through a 2-layer MLP into the UNet's class embedding). Here the MLP's output is *added to the
UNet's time embedding* through a forward hook on ``unet.time_embedding``, present only during the fake score's
own calls. That works for every ``UNet2DConditionModel`` (the teacher needs no class-embedding slot, and
``timestep_cond`` stays free for LCM's w-embedding), and the MLP's last layer starts at zero, so the fake
score starts *exactly* equal to the teacher (ProlificDreamer's does not).

The fake network is ``make_fake_score`` (``gendistill.backends.lora``, shared with DMD2): the same frozen teacher copy
with zero-initialised LoRA on the attention projections (or a full trainable copy for rank 0); its denoiser is
the model's own (``model.denoiser(network=...)``: schedule, prediction type, LCM boundary condition).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.lora import make_fake_score
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.losses import denoising_loss, dm_gradient
from gendistill.diffusion.schedules import UniformTimestepSampler
from gendistill.diffusion.timesteps import TimestepPolicy, TimestepRange
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, check_batch, no_phase, randn, weighted
from gendistill.score.teacher import Teacher

FakeWeighting = Literal["x0", "eps", "v", "min_snr"]


@dataclass
class VSDConfig:
    """Variational score distillation (ProlificDreamer): a camera-conditioned LoRA fake score of the renders."""

    KIND: ClassVar[str] = "vsd"

    guidance_scale: float = 7.5
    """CFG scale of the real score (ProlificDreamer: 7.5); <= 1 uses the conditional prediction alone."""
    lora_rank: int = 4
    """Rank of the fake score's LoRA on the teacher's attention projections; 0: a full trainable copy."""
    camera_dim: int = 16
    """Size of the flattened camera fed to the fake score (16: a 4x4 camera-to-world); 0: no camera input."""
    fake_loss_weighting: FakeWeighting = "eps"
    """Weighting of the fake score's denoising loss ("eps": the usual epsilon MSE, as ProlificDreamer)."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t)."""
    timesteps: TimestepPolicy = field(default_factory=TimestepRange)
    """Timesteps of the gradient (ProlificDreamer anneals t_max from 0.98 to 0.5: AnnealedMax). The fake
    score trains on all timesteps."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "lora_rank"), self.lora_rank, 0)
        check_range(key_path(path, "camera_dim"), self.camera_dim, 0)
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)
        check_choice(key_path(path, "fake_loss_weighting"), self.fake_loss_weighting, ("x0", "eps", "v", "min_snr"))

    def build(self, model: TextToImageModel) -> VSD:
        """VSD with ``model`` (a UNet pipeline) as the teacher and a LoRA copy of it as the fake score."""
        return VSD(model, self)


@dataclass(frozen=True)
class CameraCondition:
    """What the fake score is conditioned on: the prompts and the cameras."""

    text: TextCondition
    cameras: Tensor | None = None
    """(B, camera_dim) flattened cameras; None means all zeros (no camera)."""


class CameraEmbedding(nn.Module):
    """``Linear -> SiLU -> Linear`` from a flattened camera to the UNet's time-embedding width; the last
    layer starts at zero, so the embedding starts at zero."""

    def __init__(self, camera_dim: int, embed_dim: int):
        super().__init__()
        self.camera_dim = camera_dim
        self.net = nn.Sequential(nn.Linear(camera_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, cameras: Tensor) -> Tensor:
        return self.net(cameras)


def time_embed_dim(unet: nn.Module) -> int:
    """Width of a diffusers UNet's time embedding (what its resnets read)."""
    return unet.time_embedding.linear_2.out_features


@contextmanager
def added_time_embedding(unet: nn.Module, embedding: Tensor | None):
    """While active, ``embedding`` (B, D) is added to the output of ``unet.time_embedding``."""
    if embedding is None:
        yield
        return

    def add(_module, _inputs, out):
        if out.shape != embedding.shape:
            raise ValueError(f"camera embedding {tuple(embedding.shape)} does not fit the time embedding "
                             f"{tuple(out.shape)}: one camera per image")
        return out + embedding.to(out.dtype)

    handle = unet.time_embedding.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


class FakeScore(nn.Module):
    """``D_fake(x, sigma, CameraCondition)``: the teacher's denoiser on the fake UNet, plus the camera."""

    def __init__(self, denoiser: nn.Module, unet: nn.Module, camera: CameraEmbedding | None):
        super().__init__()
        self.denoiser, self.unet, self.camera = denoiser, unet, camera

    def forward(self, x: Tensor, sigma: Tensor, cond: CameraCondition) -> Tensor:
        embedding = None
        if self.camera is not None:
            cameras = cond.cameras
            if cameras is None:
                cameras = x.new_zeros(x.shape[0], self.camera.camera_dim)
            if cameras.shape != (x.shape[0], self.camera.camera_dim):
                raise ValueError(f"cameras must be (B, {self.camera.camera_dim}) flattened, got {tuple(cameras.shape)}")
            embedding = self.camera(cameras.to(device=x.device, dtype=x.dtype))
        with added_time_embedding(self.unet, embedding):
            return self.denoiser(x, sigma, cond.text)


class VSD:
    """ProlificDreamer's VSD. ``gradient`` is the scene's step; the extra phase ``fake_score`` (``phase_loss``)
    is the fake score's, whose parameters the caller's optimiser updates (ProlificDreamer: one each per step)."""

    def __init__(self, model: TextToImageModel, config: VSDConfig):
        if model.family != "vp":
            raise UserError("vsd needs a UNet (VP) teacher for its LoRA fake score; use sds, csd or npg with "
                            "flow-matching pipelines")
        check_config(config, config.KIND)
        self.teacher, self.config = Teacher(model), config
        self.fake_unet = make_fake_score(model.network, config.lora_rank)
        self.camera = None
        if config.camera_dim > 0:
            self.camera = CameraEmbedding(config.camera_dim, time_embed_dim(self.fake_unet))
            self.camera.to(model.network.device)
        self.fake = FakeScore(model.denoiser(network=self.fake_unet), self.fake_unet, self.camera)
        self.fake_sigmas = UniformTimestepSampler(self.teacher.train_sigmas)

    def fake_parameters(self) -> list[nn.Parameter]:
        """What the fake-score optimiser updates: the LoRA adapters (or the whole copy) and the camera MLP."""
        params = [p for p in self.fake_unet.parameters() if p.requires_grad]
        return params + ([] if self.camera is None else list(self.camera.parameters()))

    def extra_phases(self) -> list[Phase]:
        """One: ``fake_score``, the LoRA (or the full copy) and the camera MLP."""
        return [Phase("fake_score", self.fake_parameters())]

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        """The ``fake_score`` phase's loss (``fake_score_step``)."""
        if name != "fake_score":
            raise no_phase("vsd", name)
        return self.fake_score_step(images, prompts, camera_features, generator)

    def modules(self) -> dict[str, nn.Module]:
        """The fake score's state, by name, for checkpoints."""
        modules = {"fake_score": self.fake_unet}
        if self.camera is not None:
            modules["camera_embedding"] = self.camera
        return modules

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        c = self.config
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        cond = self.teacher.conditions(prompts)
        with torch.no_grad():
            real = self.teacher.guided(len(prompts), c.guidance_scale)(noised.x, noised.sigma, cond)
            fake = self.fake(noised.x, noised.sigma, CameraCondition(cond, camera_features))
        grad = dm_gradient(latents, real, fake, noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised, {})

    def fake_score_step(self, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                        generator: torch.Generator) -> Loss:
        """The fake score's denoising loss on the renders (detached), at timesteps uniform over all of T;
        timesteps first, then noise, from ``generator``."""
        check_batch(images, prompts)
        with torch.no_grad():
            x0 = self.teacher.encode(images.detach())
        sigma = self.fake_sigmas(x0.shape[0], generator).to(device=x0.device, dtype=x0.dtype)
        noise = randn(x0.shape, generator, x0)
        cond = CameraCondition(self.teacher.conditions(prompts), camera_features)
        loss = denoising_loss(self.fake, x0, sigma, noise, cond, weighting=self.config.fake_loss_weighting)
        return Loss(loss, {"fake_denoise": loss.item()})
