"""TwinFlow: one network, no frozen teacher and no critic, trained on data into a 1-NFE (and any-step) generator.

Cheng, Sun, Li et al., "TwinFlow: Realizing One-step Generation on Large Models with Self-adversarial Flows",
arXiv:2512.05150 (ICLR 2026); reference code inclusionAI/TwinFlow (``tutorials/mnist/methodes.py``). The
objective (RCGM's recursive consistency term plus the twin-trajectory terms) is in ``twinflow_losses.py``.

What this recipe adds: the network. TwinFlow's model takes two times, ``F(x_t, t, r)`` (the average velocity
from t down to r, with t in [-1, 1]: negative t is the fake trajectory). It is the flow teacher's own
transformer, initialised from the teacher's weights and fed the signed time ``1000 t``, plus the interval
embedder of MeanFlow's student for ``h = t - r`` (zero at init, so training starts from the teacher's flow
exactly): ``MeanFlowStudent``. The recursive targets come from the network itself under no_grad (the
reference's ``ema_decay_rate: 0`` mode), so a run holds one network and its optimizer state; the trainer's EMA
is only what gets exported. The export is MeanFlow's: a folder whose pipeline steps with
``FlowMapEulerDiscreteScheduler``; one step is ``x0 = z - F(z, 1, 0)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from gendistill.backends.meanflow_pipeline import IntervalEmbedder
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import TextCondition
from gendistill.distill.export import StudentSampling
from gendistill.distill.meanflow import MeanFlowStudent, meanflow_pipeline
from gendistill.distill.models import DistillBatch
from gendistill.distill.recipes import BoundRecipe
from gendistill.distill.twinflow_losses import FlowMap, twin_terms
from gendistill.errors import UserError, check_range, key_path
from gendistill.recipe import Loss, Phase, Update

TERMS = ("base", "real", "fake", "rectify", "consistency")


@dataclass
class TwinFlowConfig:
    """TwinFlow: self-adversarial twin trajectories on one network initialised from a flow teacher."""

    KIND: ClassVar[str] = "twinflow"

    order: int = 2
    """N of RCGM's N-th order recursive target (Euler steps of the network from t - delta to r)."""
    delta: float = 0.01
    """RCGM's first step (flow time) along the conditional velocity."""
    clamp: float = 1.0
    """Clamp of the recursive target's residual."""
    twin: bool = True
    """false: RCGM alone (the base term), the reference's ``using_twinflow: false``."""
    enhance: float = 0.0
    """Guidance trained into the target: + enhance * (F_cond - F_uncond) of the network (0: none)."""
    weights: dict[str, float] | None = None
    """Weight of each term (base, real, fake, rectify, consistency); None: 1 each, as the reference."""
    rectify_warmup: int = 0
    """Steps over which the rectify term's weight ramps linearly from 0 (0: full from the start). At the start the
    network's negative-time (fake) branch is the teacher's extrapolation, so its push is noise."""
    student_steps: int = 1
    """The step count the table reports first (the student samples at any count)."""
    embedder_frequency_dim: int = 256
    """Sinusoidal features of h = t - r in the interval embedder."""
    embedder_hidden_dim: int = 256
    """Hidden width of the interval embedder's MLP."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "order"), self.order, 1, 16)
        check_range(key_path(path, "delta"), self.delta, 1e-4, 0.5)
        check_range(key_path(path, "clamp"), self.clamp, 1e-6)
        check_range(key_path(path, "enhance"), self.enhance, 0.0)
        check_range(key_path(path, "rectify_warmup"), self.rectify_warmup, 0)
        check_range(key_path(path, "student_steps"), self.student_steps, 1, 1000)
        for name in ("embedder_frequency_dim", "embedder_hidden_dim"):
            check_range(key_path(path, name), getattr(self, name), 2)
        unknown = set(self.weights or {}) - set(TERMS)
        if unknown:
            raise UserError(f"{key_path(path, 'weights')}: unknown term(s) {', '.join(sorted(unknown))}; "
                            f"the terms are {', '.join(TERMS)}")

    def term_weights(self) -> dict[str, float]:
        return {name: float((self.weights or {}).get(name, 1.0)) for name in TERMS}

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The recipe on ``model`` (a flow teacher); the student exports as a flow-map SD3 pipeline."""
        recipe = TwinFlowRecipe(model, self)
        return BoundRecipe(recipe, recipe.student, StudentSampling("ddim"), model.num_train_timesteps,
                           self.student_steps, 0.0, pipeline_builder=meanflow_pipeline)


class TwinFlowRecipe:
    """One phase, ``student``; no teacher module, no fake score, no discriminator."""

    def __init__(self, model: TextToImageModel, config: TwinFlowConfig):
        check_config(config, config.KIND)
        if model.family != "flow":
            raise UserError("TwinFlow needs a flow-matching model to start from (an SD3-style pipeline)")
        self.model, self.config = model, config
        network = model.network
        with torch.random.fork_rng(devices=[]):  # the same embedder in every run, whatever the global RNG did
            torch.manual_seed(0)
            embedder = IntervalEmbedder(network.config.pooled_projection_dim, config.embedder_frequency_dim,
                                        config.embedder_hidden_dim)
        embedder = embedder.to(network.device)
        if network.dtype != embedder.dtype:
            embedder = embedder.to(dtype=network.dtype)
        self.student = MeanFlowStudent(copy.deepcopy(network), embedder, model.num_train_timesteps)
        self.student.train().requires_grad_(True)

    def phases(self) -> list[Phase]:
        return [Phase("student", list(self.student.parameters()))]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        """Nothing: the targets come from the current network every step."""

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase != "student":
            raise ValueError(f"unknown phase {phase!r}; TwinFlow has one phase, student")
        if batch.latents is None:
            raise UserError("TwinFlow trains on real latents: set data.with_latents: true (or data.source: images)")
        cfg = self.config
        cond, uncond = self.flow_map(batch.cond), self.flow_map(batch.uncond)
        terms = twin_terms(cond, cond, batch.latents.float(), generator, cfg.order, cfg.delta, cfg.clamp, cfg.twin,
                           uncond_map=uncond, enhance=cfg.enhance)
        weights = cfg.term_weights()
        if cfg.rectify_warmup:
            weights["rectify"] *= min(1.0, step / cfg.rectify_warmup)
        total = sum(weights[name] * value.mean() for name, value in terms.items())
        return Loss(total, {name: value.mean().item() for name, value in terms.items()})

    def flow_map(self, cond: TextCondition) -> FlowMap:
        """``F(x, t, r)`` of the student under ``cond`` (t signed, flow time)."""
        return lambda x, t, r: self.student(x, t, r, cond)

