"""The shapes flow teacher's training as one recipe of the one trainer: rectified flow matching.

``x_t = (1 - t) x0 + t eps`` with ``t = sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)`` (SD3's logit-normal
sampling), the transformer fed ``timestep = 1000 t`` (what FlowMatchEulerDiscreteScheduler feeds it) and
trained on ``|v_theta(x_t, t) - (eps - x0)|^2``. In canonical units (``x = x0 + sigma eps``, ``sigma = t /
(1 - t)``) this is an x0 loss weighted ``1 / t^2``; written in velocity form as SD3 trains it. Prompts are
encoded by the stock pipeline's own ``encode_prompt`` (frozen encoders, memoised per prompt), so training
sees exactly the context sampling will: CLIP penultimate states, the pooled embedding, and SD3's T5 zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gendistill.domains.shapes.flow_teacher import FlowNoiseConfig, FlowTeacherComponents, FlowTrainingConfig
from gendistill.domains.shapes.teacher import CheckpointConfig
from gendistill.domains.shapes.teacher_data import LatentBatch
from gendistill.domains.shapes.teacher_recipes import LR_FINAL, stage_trainer_config
from gendistill.recipe import Loss, Phase, Update
from gendistill.train.config import TrainerConfig

FLOW_MODULE = "transformer"
"""The trained module (and the one the trainer keeps an EMA of)."""
PHASE = "diffusion"


class PromptContext:
    """``encode_prompt`` of the stock StableDiffusion3Pipeline, memoised per prompt (the encoders are frozen)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(embeds (B, L, D), pooled (B, P)) of ``prompts``."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=missing, prompt_2=None, prompt_3=None,
                                                           do_classifier_free_guidance=False)
            self.cache.update({p: (e, q) for p, e, q in zip(missing, embeds, pooled)})
        embeds, pooled = zip(*(self.cache[p] for p in prompts))
        return torch.stack(embeds), torch.stack(pooled)


def logit_normal_t(n: int, noise: FlowNoiseConfig, generator: torch.Generator) -> Tensor:
    """``n`` flow times in (0, 1), logit-normally distributed (SD3 §3.1)."""
    return torch.sigmoid(noise.logit_mean + noise.logit_std * torch.randn(n, generator=generator))


def flow_matching_loss(transformer, x0: Tensor, embeds: Tensor, pooled: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Per-sample MSE of the predicted velocity against ``eps - x0`` at ``x_t = (1 - t) x0 + t eps``."""
    tb = t.view(-1, *[1] * (x0.dim() - 1))
    xt = (1 - tb) * x0 + tb * eps
    v = transformer(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=embeds,
                    pooled_projections=pooled).sample
    return (v - (eps - x0)).pow(2).mean(dim=tuple(range(1, x0.dim())))


@dataclass
class FlowTeacherRecipe:
    """One phase (``diffusion``) training the transformer; the EMA of it is what gets exported."""

    components: FlowTeacherComponents
    config: FlowTrainingConfig
    noise: FlowNoiseConfig
    _context: PromptContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._context = PromptContext(self.components.pipeline())

    def phases(self) -> list[Phase]:
        return [Phase(PHASE, list(self.components.transformer.parameters()), lr_final=LR_FINAL)]

    def modules(self) -> dict[str, nn.Module]:
        return {FLOW_MODULE: self.components.transformer}

    def ema_module(self) -> str | None:
        return FLOW_MODULE

    def after_update(self, update: Update) -> None:
        """Nothing to do between updates."""

    def loss(self, batch: LatentBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        transformer = self.components.transformer
        device = transformer.device
        x0 = batch.latents * float(self.components.vae.config.scaling_factor)
        t = logit_normal_t(len(x0), self.noise, generator)
        eps = torch.randn(x0.shape, generator=generator)
        embeds, pooled = self._context(batch.prompts)
        per_sample = flow_matching_loss(transformer, x0.to(device), embeds.to(device), pooled.to(device),
                                        t.to(device), eps.to(device))
        return Loss(per_sample.mean(), {"mse": per_sample.mean().item()})

    def trainer_config(self, seed: int, checkpoint: CheckpointConfig) -> TrainerConfig:
        cfg = self.config
        return stage_trainer_config(cfg.steps, seed, checkpoint, PHASE, cfg.lr, cfg.warmup_steps, cfg.weight_decay,
                                    cfg.grad_clip, cfg.ema_decay)
