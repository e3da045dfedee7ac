"""DMD2: distribution matching distillation with a two time-scale fake score (Yin et al. 2024).

The student is a 1- to K-step generator sampled as diffusers' LCMScheduler will sample it once exported
(consistency sampling at ``LCMSchedule(alphas_cumprod, S).timesteps(K)``, LCM's boundary condition with a
huge timestep scaling, so it is the identity). Each trainer step runs two phases:

- ``fake_score`` (``fake_updates`` times): a trainable copy of the teacher (or the teacher plus LoRA)
  learns the denoiser of the student's current samples; optionally a classifier head on its bottleneck
  learns to tell noised real latents from noised samples (the GAN term);
- ``generator``: a student sample is noised to a random timestep in ``timesteps`` and moved along
  ``dm_gradient`` (fake minus real x0, DMD's normaliser), the real score being the teacher with CFG;
  optionally plus DMD v1's regression loss on fixed (noise, teacher-ODE output) pairs and the
  non-saturating GAN loss through the (frozen) fake score's features.

For K > 1 the student is trained by backward simulation: its own sampler runs j ~ U{0..K-1} steps
from pure noise without gradient, and the student's prediction at step j's sigma is the sample. So it is
only ever evaluated at the K sigmas it will be sampled at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.backends.lora import make_fake_score
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.losses import denoising_loss, dm_gradient, surrogate_loss
from gendistill.diffusion.samplers import final_sample, initial_scale, sample_consistency, sample_euler
from gendistill.diffusion.schedules import DiscreteVPSchedule, LCMSchedule, UniformTimestepSampler
from gendistill.diffusion.timesteps import TimestepRange
from gendistill.distill.dmd_gan import (GANHead, bottleneck_channels, bottleneck_features, discriminator_loss,
                                        frozen, generator_gan_loss)
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent, load_student_weights
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update

FakeWeighting = Literal["x0", "eps", "v", "min_snr"]
MAX_ORIGINAL_STEPS = 1000
"""The largest LCMScheduler grid a student can be exported with (diffusers' default number of timesteps)."""


@dataclass
class DMD2Config:
    """Distribution matching distillation (DMD2): a 1- to 4-step student matching a guided teacher."""

    KIND: ClassVar[str] = "dmd2"

    guidance_scale: float = 1.75
    """CFG scale of the real score (the teacher); the student learns the guided distribution."""
    fake_updates: int = 5
    """Fake-score updates per generator update (DMD2's two time-scale update rule)."""
    student_steps: int = 1
    """K, the student's sampling steps; K > 1 trains every step by backward simulation."""
    original_steps: int | None = None
    """S, the LCMScheduler grid the K timesteps are picked from (None: S = K, evenly spaced steps)."""
    timesteps: TimestepRange = field(default_factory=lambda: TimestepRange(0.02, 0.98))
    """Timesteps of the DM gradient, as fractions of the teacher's training timesteps (DMD2: 20-980 of 1000)."""
    fake_lora_rank: int = 0
    """0: the fake score is a full trainable copy of the teacher; r > 0: a frozen copy with rank-r LoRA."""
    fake_loss_weighting: FakeWeighting = "eps"
    """Weighting of the fake score's denoising loss ("eps": the usual epsilon MSE)."""
    regression_weight: float = 0.0
    """Weight of DMD v1's regression loss on fixed (noise, teacher ODE output) pairs; 0 turns it off."""
    regression_pairs: int = 64
    """How many (noise, teacher output) pairs are made once, at construction."""
    regression_teacher_steps: int = 50
    """Steps of the deterministic teacher sampler (DDIM, trailing spacing) that makes the pairs."""
    regression_seed: int = 0
    """Seed of the pairs' noise."""
    gan_weight: float = 0.0
    """Weight of the generator's non-saturating GAN loss (DMD2: 1e-3 to 5e-3); 0: no GAN head at all."""
    gan_disc_weight: float = 1e-2
    """Weight of the classifier's loss in the fake-score phase (DMD2: 1e-2)."""
    gan_head_channels: int = 64
    """Width of the classifier head on the fake score's bottleneck features."""
    gan_timesteps: TimestepRange = field(default_factory=lambda: TimestepRange(0.0, 0.999))
    """GAN inputs are noised to a timestep uniform in this range (fractions of the training timesteps)."""
    timestep_scaling: float = 1e6
    """LCM boundary condition's timestep scaling, trained with and exported to LCMScheduler (huge: identity)."""
    student_init: str | None = None
    """A distilled student's diffusers folder (or shipped name, e.g. shapes-dmd2-1step) whose UNet the generator
    starts from (continued training; the fake score still starts from the teacher); None: a copy of the teacher."""

    @property
    def resolved_original_steps(self) -> int:
        return self.original_steps or self.student_steps

    def check(self, path: str) -> None:
        """UserErrors naming the key for out-of-range settings (the timestep ranges check themselves)."""
        for name, low in (("fake_updates", 1), ("student_steps", 1), ("fake_lora_rank", 0), ("regression_weight", 0),
                          ("regression_pairs", 1), ("regression_teacher_steps", 1), ("gan_weight", 0),
                          ("gan_head_channels", 1)):
            check_range(key_path(path, name), getattr(self, name), low)
        check_range(key_path(path, "original_steps"), self.resolved_original_steps, self.student_steps,
                    MAX_ORIGINAL_STEPS)
        check_choice(key_path(path, "fake_loss_weighting"), self.fake_loss_weighting, ("x0", "eps", "v", "min_snr"))

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch]) -> BoundRecipe:
        """The DMD2 recipe on ``model`` (``first_batch()`` gives the regression pairs' prompts, if any)."""
        recipe = DMD2Recipe(model, self, first_batch() if self.regression_weight > 0 else None)
        sampling = StudentSampling("lcm", self.resolved_original_steps, self.timestep_scaling)
        return BoundRecipe(recipe, recipe.models.student_unet, sampling, self.resolved_original_steps,
                           self.student_steps, 0.0)


# --- DMD v1's regression pairs --------------------------------------------------------------------


class RegressionPairs(nn.Module):
    """Fixed (standard-normal noise, teacher ODE output, condition) triples, as buffers so that checkpoints
    carry them. The noise is in VP units: the student and the teacher sampler each scale it to their start."""

    def __init__(self, noise: Tensor, target: Tensor, cond: TextCondition):
        super().__init__()
        self.register_buffer("noise", noise)
        self.register_buffer("target", target)
        self.register_buffer("embeds", cond.embeds)
        self.register_buffer("pooled", cond.pooled)
        self.register_buffer("time_ids", cond.time_ids)

    def __len__(self) -> int:
        return self.noise.shape[0]

    def select(self, index: Tensor) -> tuple[Tensor, Tensor, TextCondition]:
        index = index.to(self.noise.device)
        cond = TextCondition(self.embeds, self.pooled, self.time_ids)
        return self.noise[index], self.target[index], cond.take(index)


@torch.no_grad()
def teacher_ode_pairs(models: TeacherStudent, prompts: DistillBatch, config: DMD2Config,
                      chunk: int = 16) -> RegressionPairs:
    """``config.regression_pairs`` pairs: the guided teacher's deterministic DDIM output (trailing spacing,
    ``regression_teacher_steps`` steps) from seeded noise, cycling through the rows of ``prompts``."""
    n = config.regression_pairs
    rows = torch.arange(n) % prompts.size
    cond, uncond = prompts.cond.take(rows), prompts.uncond.take(rows)
    noise = torch.randn((n, *models.latent_shape), generator=torch.Generator().manual_seed(config.regression_seed))
    sigmas = DiscreteVPSchedule(models.alphas_cumprod, "trailing").sigmas(config.regression_teacher_steps)
    device = next(models.teacher_unet.parameters()).device
    targets = []
    for start in range(0, n, chunk):
        part = torch.arange(start, min(n, start + chunk))
        denoiser = CFGDenoiser(models.teacher(), uncond.take(part), config.guidance_scale)
        x = initial_scale(float(sigmas[0]), "vp") * noise[part].to(device)
        targets.append(final_sample(sample_euler(denoiser, x, sigmas, cond.take(part))))
    return RegressionPairs(noise.to(device), torch.cat(targets), cond.to(device))


# --- randomness on any device from the trainer's (CPU) generator ----------------------------------


def randn(shape, generator: torch.Generator, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise drawn on the generator's device (the trainer's are on the CPU), then moved."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device=device, dtype=dtype)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself if it lives on ``device``; else a generator there, seeded from it."""
    if generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device).manual_seed(seed)


# --- the recipe -----------------------------------------------------------------------------------


class DMD2Recipe:
    """DMD2 distilling ``model``; phases ``fake_score`` (``fake_updates`` times) then ``generator``.

    ``regression_prompts`` (needed when ``regression_weight > 0``) are the prompts of the regression
    pairs; ``batch.latents`` (real data) are needed when ``gan_weight > 0``.
    """

    def __init__(self, model: TextToImageModel, config: DMD2Config, regression_prompts: DistillBatch | None = None):
        check_config(config, config.KIND)
        self.models, self.config = TeacherStudent(model), config
        if config.student_init:
            load_student_weights(self.models.student_unet, config.student_init)
        T = model.num_train_timesteps
        self.fake_unet = make_fake_score(self.models.teacher_unet, config.fake_lora_rank)
        self.student = self.models.student(boundary=config.timestep_scaling)
        self.fake = model.denoiser(network=self.fake_unet)
        self.schedule = LCMSchedule(model.alphas_cumprod, config.resolved_original_steps)
        self.student_sigmas = self.schedule.sigmas(config.student_steps)
        sigmas = model.train_sigmas
        self.dm_sigmas = UniformTimestepSampler(sigmas, *config.timesteps.indices(T))
        self.fake_sigmas = UniformTimestepSampler(sigmas)
        self.gan_sigmas = UniformTimestepSampler(sigmas, *config.gan_timesteps.indices(T))
        self.gan_head = None
        if config.gan_weight > 0:
            self.gan_head = GANHead(bottleneck_channels(self.fake_unet), config.gan_head_channels)
        self.pairs = None
        if config.regression_weight > 0:
            if regression_prompts is None:
                raise UserError("dmd2.regression_weight > 0 needs prompts for the regression pairs")
            self.pairs = teacher_ode_pairs(self.models, regression_prompts, config)

    @property
    def student_timesteps(self) -> np.ndarray:
        """The K timesteps the exported LCMScheduler visits (the student is trained at exactly these)."""
        return self.schedule.timesteps(self.config.student_steps)

    # --- the Recipe protocol ----------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        fake = [p for p in self.fake_unet.parameters() if p.requires_grad]
        if self.gan_head is not None:
            fake += list(self.gan_head.parameters())
        return [Phase("fake_score", fake, self.config.fake_updates),
                Phase("generator", list(self.models.student_unet.parameters()))]

    def modules(self) -> dict[str, nn.Module]:
        modules = {"student": self.models.student_unet, "fake_score": self.fake_unet,
                   "teacher": self.models.teacher_unet}
        if self.gan_head is not None:
            modules["gan_head"] = self.gan_head
        if self.pairs is not None:
            modules["regression_pairs"] = self.pairs
        return modules

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        """Nothing: the trainer keeps the student's EMA; the fake score follows no target."""

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase == "fake_score":
            return self.fake_score_loss(batch, generator)
        if phase == "generator":
            return self.generator_loss(batch, generator)
        raise ValueError(f"unknown phase {phase!r}; DMD2 has fake_score and generator")

    # --- the student's samples --------------------------------------------------------------------

    def generate(self, batch: DistillBatch, generator: torch.Generator, grad: bool = True) -> Tensor:
        """A student sample x0 as the exported sampler makes it. K = 1: one call at the first sigma from
        pure noise. K > 1 (backward simulation): j ~ U{0..K-1} consistency steps without gradient, then the
        student's prediction at sigma_j; only that last call carries gradient (when ``grad``)."""
        K = self.config.student_steps
        j = int(torch.randint(0, K, (1,), generator=generator)) if K > 1 else 0
        noise = randn((batch.size, *self.models.latent_shape), generator, batch.cond.embeds.device)
        x = initial_scale(float(self.student_sigmas[0]), "vp") * noise
        if j > 0:
            with torch.no_grad():
                steps = sample_consistency(self.student, x, self.student_sigmas[: j + 1], batch.cond,
                                           generator=device_generator(generator, x.device))
                x = final_sample(steps)
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return self.student(x, x.new_tensor(float(self.student_sigmas[j])), batch.cond)

    def _noised(self, x0: Tensor, sampler: UniformTimestepSampler,
                generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0 + sigma * eps, sigma, eps)`` with sigma from ``sampler``."""
        sigma = sampler(x0.shape[0], generator).to(device=x0.device, dtype=x0.dtype)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        return x0 + expand_sigma(sigma, x0) * noise, sigma, noise

    # --- generator phase --------------------------------------------------------------------------

    def generator_loss(self, batch: DistillBatch, generator: torch.Generator) -> Loss:
        x0 = self.generate(batch, generator, grad=True)
        return Loss(*self.distillation_terms(x0, batch, generator))

    def distillation_terms(self, x0: Tensor, batch: DistillBatch,
                           generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The generator's loss on its sample ``x0`` (DM, plus regression and GAN when on) and its terms."""
        dm, grad = self.dm_loss(x0, batch, generator)
        total, terms = dm, {"dm": dm.item(), "dm_grad": grad.abs().mean().item()}
        if self.pairs is not None:
            regression = self.regression_loss(x0.shape[0], generator)
            total = total + self.config.regression_weight * regression
            terms["regression"] = regression.item()
        if self.gan_head is not None:
            with frozen(self.fake_unet, self.gan_head):
                gan = generator_gan_loss(self.gan_logits(x0, batch.cond, generator))
            total = total + self.config.gan_weight * gan
            terms["gan"] = gan.item()
        return total, terms

    def dm_loss(self, x0: Tensor, batch: DistillBatch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """DMD's surrogate loss and its gradient ``dm_gradient(x0, real, fake)`` at a noised copy of ``x0``.
        Divided by the elements per sample, so it equals DMD2's ``0.5 * mse(x0, x0 - grad)`` and the
        reference's weights for the other terms carry over."""
        with torch.no_grad():
            x, sigma, _ = self._noised(x0.detach(), self.dm_sigmas, generator)
            real = self.models.teacher_cfg(batch, self.config.guidance_scale)(x, sigma, batch.cond)
            fake = self.fake(x, sigma, batch.cond)
        grad = dm_gradient(x0, real, fake, sigma, weighting="dmd")
        return surrogate_loss(x0, grad) / x0[0].numel(), grad

    def regression_loss(self, n: int, generator: torch.Generator) -> Tensor:
        """DMD v1's regression: MSE (LPIPS is not available) between the student's one-step output from a
        stored noise and the teacher's ODE output from the same noise, on ``n`` random stored pairs."""
        noise, target, cond = self.pairs.select(torch.randint(0, len(self.pairs), (n,), generator=generator))
        sigma = float(self.student_sigmas[0])
        x0 = self.student(initial_scale(sigma, "vp") * noise, noise.new_tensor(sigma), cond)
        return F.mse_loss(x0, target)

    def gan_logits(self, x0: Tensor, cond: TextCondition, generator: torch.Generator) -> Tensor:
        """The classifier's realism logits of ``x0`` noised to a random GAN timestep, (B,)."""
        x, sigma, _ = self._noised(x0, self.gan_sigmas, generator)
        return self.gan_head(bottleneck_features(self.fake_unet, lambda: self.fake(x, sigma, cond)))

    # --- fake-score phase -------------------------------------------------------------------------

    def fake_score_loss(self, batch: DistillBatch, generator: torch.Generator) -> Loss:
        """Denoising loss of the fake score on fresh student samples (all timesteps), plus the classifier's
        loss on real latents against those samples when the GAN term is on."""
        with torch.no_grad():
            x0 = self.generate(batch, generator, grad=False)
        sigma = self.fake_sigmas(x0.shape[0], generator).to(device=x0.device, dtype=x0.dtype)
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
        total = denoising_loss(self.fake, x0, sigma, noise, batch.cond, weighting=self.config.fake_loss_weighting)
        terms = {"denoise": total.item()}
        if self.gan_head is not None:
            if batch.latents is None:
                raise UserError("dmd2.gan_weight > 0 needs real latents in the training batches")
            real = self.gan_logits(batch.latents.to(x0), batch.cond, generator)
            fake = self.gan_logits(x0, batch.cond, generator)
            gan = discriminator_loss(real, fake)
            total = total + self.config.gan_disc_weight * gan
            terms.update(gan=gan.item(), p_real=torch.sigmoid(real).mean().item(),
                         p_fake=torch.sigmoid(fake).mean().item())
        return Loss(total, terms)
