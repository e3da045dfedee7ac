"""The shapes teacher's training as recipes of the one trainer, in three stages run one after another:

1. ``vae``: the autoencoder (encoder + decoder) on cached renders; then its latent channel means are folded
   into its biases and ``scaling_factor`` is set (:func:`fold_latent_statistics`);
2. ``diffusion``: text encoder and UNet together on noised cached latents, with caption dropout (so
   classifier-free guidance works) and an EMA of both (the trainer's ``ema_decay``);
3. ``decoder``: the VAE decoder alone, refitted on latents of the frozen encoder.

Each stage is one :class:`TeacherRecipe` around a :class:`TeacherStage` (the stage's phase, loss and trainer
settings), run by its own ``Trainer``. Every stage checkpoints every component (``vae`` and ``denoiser`` =
UNet + text encoder) and the VAE's scaling factor, so the newest checkpoint of the newest stage holds the
whole teacher. Learning rates warm up linearly, then decay exponentially to 10% over the stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.config import check_config
from gendistill.domains.shapes.teacher import (
    CheckpointConfig, DecoderTrainingConfig, DiffusionTrainingConfig, NoiseConfig, TeacherComponents,
    VAETrainingConfig, build_training_scheduler,
)
from gendistill.domains.shapes.teacher_data import ImageBatch, LatentBatch, encode_cache
from gendistill.recipe import Loss, ParamGroup, Phase, Update
from gendistill.train.config import OptimizerConfig, TrainerConfig

LR_FINAL = 0.1
"""Every stage's learning rate decays to this fraction of its peak by the stage's last step."""
EMA_MODULE = "denoiser"
"""The module the trainer keeps an EMA of (when the stage's ``ema_decay`` is set): UNet + text encoder."""


class TeacherStage(Protocol):
    """One stage of the teacher's training: what it optimises, its loss, and its loop settings."""

    name: ClassVar[str]
    """Names the stage's phase, its optimizer config and its checkpoint folder."""

    @property
    def steps(self) -> int:
        """Optimizer steps of the stage (0: the stage is skipped)."""

    def phase(self, components: TeacherComponents) -> Phase:
        """The one phase of this stage."""

    def loss(self, components: TeacherComponents, batch, generator: torch.Generator) -> Loss:
        """The loss on ``batch``; every random draw comes from ``generator``."""

    def trainer_config(self, seed: int, checkpoint: CheckpointConfig) -> TrainerConfig:
        """The loop of this stage (steps, optimizer, clipping, EMA, checkpoints)."""


def teacher_modules(components: TeacherComponents) -> dict[str, nn.Module]:
    """What every stage checkpoints: ``vae`` and ``denoiser`` (``unet`` + ``text_encoder``)."""
    denoiser = nn.ModuleDict({"unet": components.unet, "text_encoder": components.text_encoder})
    return {"vae": components.vae, EMA_MODULE: denoiser}


@dataclass
class TeacherRecipe:
    """The trainer's recipe for one stage of the shapes teacher (see the module docstring)."""

    components: TeacherComponents
    stage: TeacherStage
    _modules: dict[str, nn.Module] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._modules = teacher_modules(self.components)

    def phases(self) -> list[Phase]:
        return [self.stage.phase(self.components)]

    def modules(self) -> dict[str, nn.Module]:
        return self._modules

    def ema_module(self) -> str | None:
        return EMA_MODULE

    def loss(self, batch, phase: str, step: int, generator: torch.Generator) -> Loss:
        return self.stage.loss(self.components, batch, generator)

    def after_update(self, update: Update) -> None:
        """Nothing to do between updates."""

    def extra_state(self) -> dict[str, Tensor]:
        """The VAE's ``scaling_factor`` (a config value, not a tensor of its modules)."""
        return {"scaling_factor": torch.tensor([float(self.components.vae.config.scaling_factor)],
                                               dtype=torch.float64)}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if "scaling_factor" in state:
            self.components.vae.register_to_config(scaling_factor=float(state["scaling_factor"][0]))


def _psnr(mse: Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4.0 / max(mse.item(), 1e-10))


def stage_trainer_config(steps: int, seed: int, checkpoint: CheckpointConfig, phase: str, lr: float, warmup: int,
                    weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                    ema_decay: float | None = None) -> TrainerConfig:
    config = TrainerConfig(
        steps=steps, seed=seed, grad_clip=grad_clip, ema_decay=ema_decay or None, ema_warmup=True,
        optimizers={phase: OptimizerConfig(kind="adamw", lr=lr, warmup_steps=warmup, weight_decay=weight_decay)},
        checkpoint_every=checkpoint.every_steps, keep_checkpoints=checkpoint.keep, log_every=1)
    check_config(config, phase)
    return config


@dataclass(frozen=True)
class VAEStage:
    """Stage 1: MSE + L1 + a small KL + the squared batch mean of the latents (keeps them near zero-mean)."""

    config: VAETrainingConfig
    name: ClassVar[str] = "vae"

    @property
    def steps(self) -> int:
        return self.config.steps

    def phase(self, components: TeacherComponents) -> Phase:
        return Phase(self.name, list(components.vae.parameters()), lr_final=LR_FINAL)

    def loss(self, components: TeacherComponents, batch: ImageBatch, generator: torch.Generator) -> Loss:
        cfg, vae = self.config, components.vae
        x = batch.images.to(vae.device)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=generator)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / z[0].numel()
        mean_penalty = z.mean(dim=(0, 2, 3)).pow(2).sum()
        total = mse + cfg.l1_weight * (recon - x).abs().mean() + cfg.kl_weight * kl + cfg.mean_weight * mean_penalty
        return Loss(total, {"psnr": _psnr(mse), "kl": kl.item()})

    def trainer_config(self, seed: int, checkpoint: CheckpointConfig) -> TrainerConfig:
        return stage_trainer_config(self.config.steps, seed, checkpoint, self.name, self.config.lr,
                               self.config.warmup_steps)


@dataclass(frozen=True)
class DecoderStage:
    """Stage 3: the decoder (and ``post_quant_conv``) on fresh posterior samples of cached latents; the
    encoder is not touched, so the UNet's latents stay valid."""

    config: DecoderTrainingConfig
    name: ClassVar[str] = "decoder"

    @property
    def steps(self) -> int:
        return self.config.steps

    def phase(self, components: TeacherComponents) -> Phase:
        vae = components.vae
        return Phase(self.name, [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()], lr_final=LR_FINAL)

    def loss(self, components: TeacherComponents, batch: LatentBatch, generator: torch.Generator) -> Loss:
        vae = components.vae
        x = batch.images.to(vae.device)
        recon = vae.decode(batch.latents.to(vae.device)).sample
        mse = F.mse_loss(recon, x)
        return Loss(mse + self.config.l1_weight * (recon - x).abs().mean(), {"psnr": _psnr(mse)})

    def trainer_config(self, seed: int, checkpoint: CheckpointConfig) -> TrainerConfig:
        return stage_trainer_config(self.config.steps, seed, checkpoint, self.name, self.config.lr,
                               self.config.warmup_steps)


class PromptIds:
    """Tokenizes prompts exactly as StableDiffusionPipeline does (padded to max length), memoised."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, Tensor] = {}

    def __call__(self, prompts: list[str]) -> Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[p] for p in prompts])


def loss_weights(scheduler, t: Tensor, gamma: float, prediction_type: str) -> Tensor:
    """Min-SNR-gamma weights for the prediction target (ones when gamma is 0)."""
    if gamma <= 0:
        return torch.ones(len(t))
    abar = scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar).clamp_min(1e-8)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr.clamp_min(1e-8)


@dataclass
class DiffusionStage:
    """Stage 2: text encoder and UNet on cached latents scaled by the VAE's ``scaling_factor``, noised by the
    training (DDPM) scheduler; the UNet predicts ``noise.prediction_type``, weighted by Min-SNR-gamma."""

    config: DiffusionTrainingConfig
    noise: NoiseConfig
    name: ClassVar[str] = "diffusion"
    _prompt_ids: PromptIds | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.scheduler = build_training_scheduler(self.noise)

    @property
    def steps(self) -> int:
        return self.config.steps

    def phase(self, components: TeacherComponents) -> Phase:
        lr, scale = self.config.lr, self.config.text_lr_scale
        return Phase(self.name, groups=(
            ParamGroup("unet", list(components.unet.parameters()), lr=lr, lr_final=LR_FINAL),
            ParamGroup("text_encoder", list(components.text_encoder.parameters()), lr=lr * scale,
                       lr_final=LR_FINAL)))

    def loss(self, components: TeacherComponents, batch: LatentBatch, generator: torch.Generator) -> Loss:
        cfg, scheduler, device = self.config, self.scheduler, components.unet.device
        if self._prompt_ids is None:
            self._prompt_ids = PromptIds(components.tokenizer)
        z0 = batch.latents * float(components.vae.config.scaling_factor)
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(z0),), generator=generator)
        zt = scheduler.add_noise(z0, noise, t)
        prediction = self.noise.prediction_type
        target = scheduler.get_velocity(z0, noise, t) if prediction == "v_prediction" else noise
        hidden = components.text_encoder(self._prompt_ids(batch.prompts).to(device))[0]
        pred = components.unet(zt.to(device), t.to(device), hidden).sample
        per_sample = (pred - target.to(device)).pow(2).mean(dim=(1, 2, 3))
        weights = loss_weights(scheduler, t, cfg.min_snr_gamma, prediction).to(device)
        return Loss((per_sample * weights).mean(), {"mse": per_sample.mean().item()})

    def trainer_config(self, seed: int, checkpoint: CheckpointConfig) -> TrainerConfig:
        cfg = self.config
        return stage_trainer_config(cfg.steps, seed, checkpoint, self.name, cfg.lr, cfg.warmup_steps,
                               cfg.weight_decay, cfg.grad_clip, cfg.ema_decay)


@torch.no_grad()
def fold_latent_statistics(vae, images: Tensor) -> tuple[Tensor, float]:
    """Fold the latent channel means of uint8 ``images`` into the VAE's conv biases (exact), then set
    ``scaling_factor = 1 / std``; returns the removed per-channel mean and the new scaling factor.

    Stock SD pipelines only divide by ``scaling_factor``, so zero-mean latents must come from the VAE
    itself: ``quant_conv`` shifts the posterior mean by ``-m`` and ``post_quant_conv`` adds ``W m`` back.
    """
    latents = encode_cache(vae, images).mean
    channels = latents.shape[1]
    m = latents.mean(dim=(0, 2, 3)).to(vae.device)
    vae.quant_conv.bias[:channels] -= m
    vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ m
    std = float((latents - m.cpu()[None, :, None, None]).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return m.cpu(), 1.0 / std
