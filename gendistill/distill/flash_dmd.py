"""Flash-DMD: timestep-aware DMD with an adversarial term at low noise, and joint reward fine-tuning.

Chen, Huang, Liu, Zhu, Qu, Chen, Cheng, Sun, "Flash-DMD: Towards High-Fidelity Few-Step Image Generation with
Efficient Distillation and Joint Reinforcement Learning", arXiv:2511.20549 (2025).

What this recipe takes from the paper:

1. **Timestep-aware distillation.** DMD2 adds the distribution-matching gradient and the GAN gradient at
   every timestep, and the two conflict. Flash-DMD splits the noise levels: high-noise timesteps (global
   structure) get the DM gradient only, low-noise timesteps (texture, realism) the adversarial loss on real
   data only. Here, with ``s = round(split * T)``, the DM gradient is taken at a re-noising timestep uniform
   in ``[s, dm_t_max * T]`` and both the classifier and the generator's GAN term at one uniform in
   ``[gan_t_min * T, s - 1]``; the two ranges never meet. The generator's loss is
   ``distill_weight * (L_DM(t >= s) + gan_weight * L_GAN(t < s))``.
2. **Joint RL.** The generator is fine-tuned on a reward while that distillation loss keeps running as its
   regulariser: ``L = distill_weight * L_distill - reward_weight * mean r(decode(x0), prompt)``, the reward
   back-propagated through the VAE decoder into the student (the paper's reward model works on latents;
   ours score decoded pixels, see ``rewards.py``). ``distill_weight: 0`` is the same run without the
   regulariser: pure reward fine-tuning, the paper's reward-hacking baseline.

Everything else is DMD2's, composed, not copied: ``DMD2Recipe`` (built from the ``DMD2Config`` this config
derives) samples the student exactly as the exported LCMScheduler will, takes the DM gradient, trains the fake
score and the GAN head on its bottleneck. The paper's discriminator is a SAM-feature pixel-space GAN; here it is
DMD2's head on the fake score's bottleneck (no SAM weights exist on these machines). The paper's exact split
value, update ratio and learning rates were not recoverable from the text we could read; the defaults below
are ours and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.timesteps import TimestepRange, timestep_index
from gendistill.distill.dmd import DMD2Config, DMD2Recipe, FakeWeighting
from gendistill.distill.dmd_gan import frozen
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch
from gendistill.distill.recipes import BoundRecipe
from gendistill.distill.rewards import Reward, RewardConfig
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase, Update


@dataclass
class FlashDMDConfig:
    """Flash-DMD: DM gradient at high noise, GAN at low noise, optionally jointly fine-tuned on a reward."""

    KIND: ClassVar[str] = "flash_dmd"

    split: float = 0.5
    """Timestep (fraction of T) between the ranges: DM gradient at and above it, GAN below it (ours: 0.5)."""
    dm_t_max: float = 0.98
    """Largest timestep of the DM gradient, as a fraction of T (DMD2's 980 of 1000)."""
    gan_t_min: float = 0.0
    """Smallest timestep of the GAN inputs, as a fraction of T."""
    guidance_scale: float = 1.75
    """CFG scale of the real score (the teacher)."""
    fake_updates: int = 1
    """Fake-score (and classifier) updates per generator update (DMD2: 5; ours: 1, the cheap end)."""
    student_steps: int = 1
    """K, the student's sampling steps; K > 1 trains every step by backward simulation (as DMD2)."""
    original_steps: int | None = None
    """S, the LCMScheduler grid the K timesteps are picked from (None: S = K)."""
    fake_lora_rank: int = 0
    """0: the fake score is a full trainable copy of the teacher; r > 0: a frozen copy with rank-r LoRA."""
    fake_loss_weighting: FakeWeighting = "eps"
    """Weighting of the fake score's denoising loss."""
    gan_weight: float = 1e-2
    """Weight of the generator's GAN loss against the DM loss (0: no GAN head, DM only)."""
    gan_disc_weight: float = 1e-2
    """Weight of the classifier's loss in the fake-score phase (DMD2's 1e-2)."""
    gan_head_channels: int = 64
    """Width of the classifier head on the fake score's bottleneck."""
    distill_weight: float = 1.0
    """Weight of the distillation loss (DM + GAN); 0 drops it and the fake-score phase: pure reward tuning."""
    reward_weight: float = 0.0
    """Weight of the reward (maximised); 0: plain timestep-aware distillation, no decoding."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Which reward, and on how many decoded samples per step."""
    timestep_scaling: float = 1e6
    """LCM boundary condition's timestep scaling, trained with and exported to LCMScheduler."""
    student_init: str | None = None
    """A distilled student's diffusers folder (or shipped name, e.g. shapes-dmd2-1step) whose UNet the generator
    starts from (joint RL on a distilled model); None: a copy of the teacher's, as DMD2."""

    def check(self, path: str) -> None:
        for name, low in (("fake_updates", 1), ("student_steps", 1), ("fake_lora_rank", 0), ("gan_weight", 0),
                          ("gan_disc_weight", 0), ("gan_head_channels", 1), ("distill_weight", 0),
                          ("reward_weight", 0)):
            check_range(key_path(path, name), getattr(self, name), low)
        for name in ("split", "dm_t_max", "gan_t_min"):
            check_range(key_path(path, name), getattr(self, name), 0.0, 1.0)
        if not self.gan_t_min < self.split <= self.dm_t_max:
            raise UserError(f"{key_path(path, 'split')} must be above gan_t_min ({self.gan_t_min:g}) and at most "
                            f"dm_t_max ({self.dm_t_max:g}), got {self.split:g}")
        if self.distill_weight == 0 and self.reward_weight == 0:
            raise UserError(f"{key_path(path, 'distill_weight')} and reward_weight are both 0: nothing to train")
        check_choice(key_path(path, "fake_loss_weighting"), self.fake_loss_weighting, ("x0", "eps", "v", "min_snr"))

    def ranges(self, num_train_timesteps: int) -> tuple[TimestepRange, TimestepRange]:
        """The DM range ``[s, dm_t_max]`` and the GAN range ``[gan_t_min, s - 1]`` (s = the split's timestep),
        as fractions that round to exactly those timesteps of a T-step model."""
        T = num_train_timesteps
        s = timestep_index(self.split, T)
        if s <= timestep_index(self.gan_t_min, T) or s > timestep_index(self.dm_t_max, T):
            raise UserError(f"flash_dmd.split {self.split:g} leaves no timestep on one side on a {T}-step model")
        return TimestepRange(s / T, self.dm_t_max), TimestepRange(self.gan_t_min, (s - 1) / T)

    def dmd2(self, num_train_timesteps: int) -> DMD2Config:
        """The DMD2 settings this recipe runs on: its timesteps restricted to the two sides of the split."""
        dm_range, gan_range = self.ranges(num_train_timesteps)
        return DMD2Config(
            guidance_scale=self.guidance_scale, fake_updates=self.fake_updates, student_steps=self.student_steps,
            original_steps=self.original_steps, timesteps=dm_range, fake_lora_rank=self.fake_lora_rank,
            fake_loss_weighting=self.fake_loss_weighting, gan_weight=self.gan_weight,
            gan_disc_weight=self.gan_disc_weight, gan_head_channels=self.gan_head_channels,
            gan_timesteps=gan_range, timestep_scaling=self.timestep_scaling, student_init=self.student_init)

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The Flash-DMD recipe on ``model``; the student exports as DMD2's does (LCMScheduler)."""
        recipe = FlashDMDRecipe(model, self)
        dmd2 = recipe.distill.config
        sampling = StudentSampling("lcm", dmd2.resolved_original_steps, self.timestep_scaling)
        return BoundRecipe(recipe, recipe.student_unet, sampling, dmd2.resolved_original_steps,
                           self.student_steps, 0.0)


class FlashDMDRecipe:
    """Phases ``fake_score`` (``fake_updates`` times; absent when ``distill_weight`` is 0) then ``generator``."""

    def __init__(self, model: TextToImageModel, config: FlashDMDConfig):
        check_config(config, config.KIND)
        self.model, self.config = model, config
        self.distill = DMD2Recipe(model, config.dmd2(model.num_train_timesteps))
        self.student_unet = self.distill.models.student_unet
        self.reward: Reward | None = None
        self.vae = None
        if config.reward_weight > 0:
            self.vae = getattr(getattr(model, "pipe", None), "vae", None)
            if self.vae is None:
                raise UserError("flash_dmd.reward_weight > 0 needs a teacher with a VAE to decode the samples")
            self.reward = config.reward.build(next(self.vae.parameters()).device)

    # --- the Recipe protocol ----------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        phases = self.distill.phases()
        return phases if self.config.distill_weight > 0 else [p for p in phases if p.name == "generator"]

    def modules(self) -> dict[str, nn.Module]:
        return self.distill.modules()

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        """Nothing: the trainer keeps the student's EMA."""

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase == "fake_score":
            return self.distill.fake_score_loss(batch, generator)
        if phase == "generator":
            return self.generator_loss(batch, generator)
        raise ValueError(f"unknown phase {phase!r}; Flash-DMD has fake_score and generator")

    # --- generator phase --------------------------------------------------------------------------

    def generator_loss(self, batch: DistillBatch, generator: torch.Generator) -> Loss:
        """``distill_weight * (DM at t >= split + gan_weight * GAN at t < split) - reward_weight * reward``."""
        x0 = self.distill.generate(batch, generator, grad=True)
        total, terms = x0.new_zeros(()), {}
        if self.config.distill_weight > 0:
            distill, terms = self.distill.distillation_terms(x0, batch, generator)
            total = total + self.config.distill_weight * distill
        if self.reward is not None:
            reward = self.reward_of(x0, batch.prompts).mean()
            total = total - self.config.reward_weight * reward
            terms["reward"] = reward.item()
        return Loss(total, terms)

    def reward_of(self, x0: Tensor, prompts: list[str]) -> Tensor:
        """The reward of the first ``reward.samples`` samples, decoded (and downsampled) with gradient, (n,)."""
        n = min(self.config.reward.samples, x0.shape[0])
        with frozen(self.vae):  # the graph reaches the student through the VAE, whose weights stay as they are
            images = self.config.reward.prepare(self.model.decode_with_grad(x0[:n]))
        return self.reward(images, list(prompts[:n]))
