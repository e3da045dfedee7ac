"""MeanFlow distillation: a flow-matching teacher (SD3-style) into a student of *average* velocities that samples
at 1, 2, 4, ... steps from one checkpoint.

Papers: Geng, Deng, Bai, Kolter, He, "Mean Flows for One-step Generative Modeling" (arXiv 2505.13447), and its
distillation stage in "MeanFlow Transformers with Representation Autoencoders" (MF-RAE; reference code
sony/mf-rae, ``src/stage2/transport/transport.py: training_losses_mfd``).

Flow time ``t`` in [0, 1], ``z_t = (1 - t) x0 + t eps``, velocities ``v = dz/dt`` (SD3's convention: the transformer
sees ``timestep = 1000 t`` and predicts ``eps - x0``). The student predicts ``u(z_t, r, t) = 1/(t - r) *
integral_r^t v(z_s, s) ds`` (r <= t), which satisfies the MeanFlow identity ``u = v(z_t, t) - (t - r) du/dt``,
``du/dt = v . d_z u + d_t u`` the total derivative along the flow. Per sample:

- ``x0`` are real latents (``data.with_latents: true``) and ``z_t = (1 - t) x0 + t eps`` with fresh noise, as the
  reference code does (it encodes real images and noises them; it never rolls out from pure noise);
- ``(t, r)``: two logit-normal(``time_mean``, ``time_std``) draws, shifted like the teacher's sampling grid
  (``s t / (1 + (s - 1) t)``, the reference's ``time_dist_shift``), sorted; for a share ``1 - ratio_r_neq_t`` of
  the samples ``r = t`` (the paper's best: 25 % of samples with r != t, logit-normal(-0.4, 1));
- ``v``: the teacher's velocity at ``(z_t, t)`` with classifier-free guidance ``guidance_scale`` (the reference
  uses the teacher's conditional velocity, i.e. scale 1); ``teacher_velocity: false`` is vanilla MeanFlow, the
  conditional velocity ``eps - x0`` (no teacher), with the MeanFlow paper's guidance when ``guidance_scale`` w is
  not 1 (its Sec. 4.2, mixing scale kappa = 0): ``v = w (eps - x0) + (1 - w) stopgrad u(z_t, t, t | empty)``,
  the unconditional u learnt from a share ``cond_dropout`` of samples trained with the empty prompt on the plain
  ``eps - x0`` (the paper's 10 %); ``bootstrap: true`` is the student's own one-point estimate
  ``stopgrad u(z_t, t, t)`` (no teacher);
- ``du/dt`` is the JVP of ``u_theta`` at ``(z_t, r, t)`` along ``(v, 0, 1)``: ``jvp: autograd`` uses
  ``torch.func.jvp`` (exact, forward-mode through every op; attention runs on PyTorch's math kernel, the fused ones
  having no forward-mode derivative), ``jvp: finite_difference`` the reference's central
  difference ``(u(z + d v, r, t + d) - u(z - d v, r, t - d)) / 2d`` (``fd_step`` = d; two extra forwards without a
  graph, any attention kernel). autograd is the default: SD3 embeds ``1000 t`` with sinusoids up to frequency
  1000 and diffusers rounds the timestep to float32 inside its embedding, so a difference quotient is only as
  good as ``d`` is small against 1/1000 and large against that rounding (about 1e-3 relative at best on a
  random tiny transformer, ``tests/distill/test_meanflow.py``), and worthless under bf16;
- target ``u_tgt = v - (t - r) du/dt`` (stop-gradient), ``D = ||u - u_tgt||^2`` summed over the latent, and the
  paper's adaptive weight: ``loss = stopgrad(w) D``, ``w = 1 / (D + adaptive_c)^adaptive_p`` (p = 1, c = 1e-3).
  The reference code instead applies the weight to ``D^2`` (``w = 1 / (D^2 + c)^p``, ``loss = w D^2``); we follow
  the paper.

What the reference does where it differs: MF-RAE trains in two post-training runs, each started from a
"consistency mid-training" (CMT) checkpoint, not from the teacher: MFD (``train_mfd.py``: the teacher's velocity,
as here) and MFT (``train_mft.py``: the one-point estimate ``eps - x0``, i.e. ``teacher_velocity: false``), both
in fp32 with the central difference. CMT is not implemented here: the student starts from the teacher's weights
(or ``student_init``, e.g. a stage-1 export, to run MFT-style or ``bootstrap`` on top of it).

Two-time conditioning: the student is the stock ``SD3Transformer2DModel`` (a copy of the teacher's, fed t) plus an
``IntervalEmbedder`` of ``h = t - r`` added to ``pooled_projections`` (``backends/meanflow_pipeline.py``). SD3
adds the pooled text embedding to its timestep embedding, so ``h`` reaches every block's modulation the way ``t``
does, with no change to the stock transformer (which therefore saves and loads as a plain diffusers folder). The
embedder is exactly zero at ``h = 0`` and, its last layer zero-initialised, everywhere at init: the untrained
student is the teacher's instantaneous velocity, and ``u(z, t, t)`` is always the transformer alone.

Sampling: ``z_r = z_t - (t - r) u(z_t, r, t)`` on the uniform grid 1 -> 0 with the teacher's shift, exactly what
``FlowMapEulerDiscreteScheduler`` does; the export is a diffusers folder with ``pipeline.py`` (the pipeline class)
that stock diffusers loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gendistill.backends.meanflow_pipeline import (
    IntervalEmbedder,
    MeanFlowStableDiffusion3Pipeline,
    flow_map_sigmas,
    flow_map_steps,
    interval_velocity,
)
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import TextCondition
from gendistill.distill.dmd import randn
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_choice, check_range, first_line, key_path
from gendistill.recipe import Loss, Phase, Update


@dataclass
class MeanFlowConfig:
    """MeanFlow distillation: a student of average velocities u(z_t, r, t) that samples at any step count."""

    KIND: ClassVar[str] = "meanflow"

    guidance_scale: float = 2.0
    """CFG scale of the teacher's velocity (1: its conditional velocity, one forward); the student learns it."""
    teacher_velocity: bool = True
    """false: vanilla MeanFlow on the data, v = eps - x0 (no teacher), guided by the student's own unconditional
    u(z_t, t, t) when guidance_scale is not 1 (the MeanFlow paper's CFG)."""
    cond_dropout: float = 0.1
    """Vanilla MeanFlow with guidance: share of samples trained with the empty prompt on eps - x0."""
    bootstrap: bool = False
    """true: v is the student's own stopgrad u(z_t, t, t) (one-point estimate, no teacher)."""
    jvp: Literal["autograd", "finite_difference"] = "autograd"
    """How du/dt is computed: torch.func.jvp (exact), or the reference code's central difference."""
    fd_step: float = 1e-3
    """Finite-difference step in flow time (the reference's delta_t is 5e-3 on its t-in-[0, 1] embedding; SD3
    embeds 1000 t, so 1e-3 is one timestep). Use float32: under bf16 the difference is rounding noise."""
    ratio_r_neq_t: float = 0.25
    """Share of samples with r < t (the others have r = t: plain flow matching on the teacher's velocity)."""
    time_mean: float = -0.4
    """Mean of the logit-normal (t, r) draws."""
    time_std: float = 1.0
    """Standard deviation of the logit-normal (t, r) draws."""
    time_shift: float | None = None
    """Shift s of the drawn times, s t / (1 + (s - 1) t) (None: the teacher scheduler's shift; 1: none)."""
    adaptive_p: float = 1.0
    """Power p of the adaptive weight 1 / (||delta||^2 + c)^p (0: plain squared error)."""
    adaptive_c: float = 1e-3
    """Constant c of the adaptive weight."""
    student_steps: int = 1
    """The step count the table reports first (the student samples at any count)."""
    embedder_frequency_dim: int = 256
    """Sinusoidal features of h = t - r in the interval embedder."""
    embedder_hidden_dim: int = 256
    """Hidden width of the interval embedder's MLP."""
    student_init: str | None = None
    """A diffusers folder whose transformer (and interval embedder, for a MeanFlow export such as a stage-1 run's
    pipeline/) the student starts from: stage 2 (bootstrap, or vanilla on data); None: the teacher's."""

    def check(self, path: str) -> None:
        """UserErrors naming the key for out-of-range or contradictory settings."""
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0)
        check_choice(key_path(path, "jvp"), self.jvp, ("autograd", "finite_difference"))
        check_range(key_path(path, "fd_step"), self.fd_step, 1e-6, 0.1)
        check_range(key_path(path, "ratio_r_neq_t"), self.ratio_r_neq_t, 0.0, 1.0)
        check_range(key_path(path, "cond_dropout"), self.cond_dropout, 0.0, 1.0)
        check_range(key_path(path, "time_std"), self.time_std, 1e-3)
        if self.time_shift is not None:
            check_range(key_path(path, "time_shift"), self.time_shift, 1e-3)
        check_range(key_path(path, "adaptive_p"), self.adaptive_p, 0.0)
        check_range(key_path(path, "adaptive_c"), self.adaptive_c, 1e-12)
        check_range(key_path(path, "student_steps"), self.student_steps, 1, 1000)
        for name in ("embedder_frequency_dim", "embedder_hidden_dim"):
            check_range(key_path(path, name), getattr(self, name), 2)
        if self.embedder_frequency_dim % 2:
            raise UserError(f"{key_path(path, 'embedder_frequency_dim')} must be even, got "
                            f"{self.embedder_frequency_dim}")
        if self.guidance_scale != 1 and self.velocity_source == "student":
            raise UserError(f"{key_path(path, 'guidance_scale')} guides the teacher's or the data's velocity; "
                            f"with bootstrap there is neither: set it to 1, got {self.guidance_scale}")
        if self.bootstrap and not self.teacher_velocity:
            raise UserError(f"{key_path(path, 'bootstrap')} replaces the teacher's velocity by the student's; "
                            "leave teacher_velocity true (false is vanilla MeanFlow, a third choice)")

    @property
    def velocity_source(self) -> str:
        """Where v comes from: "teacher", "conditional" (eps - x0) or "student" (bootstrap)."""
        if self.bootstrap:
            return "student"
        return "teacher" if self.teacher_velocity else "conditional"

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The recipe on ``model``; the student exports as a MeanFlow SD3 pipeline (any step count)."""
        recipe = MeanFlowRecipe(model, self)
        return BoundRecipe(recipe, recipe.student, StudentSampling("ddim"), model.num_train_timesteps,
                           self.student_steps, 0.0, pipeline_builder=meanflow_pipeline)


class MeanFlowStudent(nn.Module):
    """The student: a transformer (the teacher's architecture and, at start, weights) and its interval embedder;
    ``forward(z, t, r, cond)`` is the average velocity from r to t (flow times, (B,))."""

    def __init__(self, transformer: nn.Module, interval_embedder: IntervalEmbedder, num_train_timesteps: int = 1000):
        super().__init__()
        self.transformer, self.interval_embedder = transformer, interval_embedder
        self.num_train_timesteps = num_train_timesteps

    def forward(self, z: Tensor, t: Tensor, r: Tensor, cond: TextCondition) -> Tensor:
        T = self.num_train_timesteps
        dtype = self.transformer.dtype
        out = interval_velocity(self.transformer, self.interval_embedder, z.to(dtype), t * T, r * T,
                                cond.embeds.to(dtype), cond.pooled.to(dtype), T)
        return out.to(z.dtype)


def teacher_velocity(network: nn.Module, z: Tensor, t: Tensor, batch: DistillBatch, scale: float,
                     num_train_timesteps: int = 1000) -> Tensor:
    """The flow teacher's velocity at (z, t) with classifier-free guidance ``scale`` against the empty prompt."""
    dtype = network.dtype
    cond = batch.cond if scale == 1 else batch.uncond.cat(batch.cond)
    n = 1 if scale == 1 else 2
    out = network(hidden_states=z.to(dtype).repeat(n, 1, 1, 1), timestep=(t * num_train_timesteps).repeat(n),
                  encoder_hidden_states=cond.embeds.to(dtype), pooled_projections=cond.pooled.to(dtype),
                  return_dict=False)[0].to(z.dtype)
    if scale == 1:
        return out
    v_uncond, v_cond = out.chunk(2)
    return v_uncond + scale * (v_cond - v_uncond)


def sample_times(batch_size: int, config: MeanFlowConfig, shift: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(t, r)``, (B,) each, float32 on the CPU: sorted shifted logit-normal pairs, r = t for a share
    ``1 - ratio_r_neq_t``."""
    normal = torch.randn((batch_size, 2), generator=generator, device=generator.device).cpu()
    times = torch.sigmoid(config.time_mean + config.time_std * normal)
    times = shift * times / (1 + (shift - 1) * times)
    r, t = times.sort(dim=1).values.unbind(1)
    keep = torch.rand(batch_size, generator=generator, device=generator.device).cpu() < config.ratio_r_neq_t
    return t, torch.where(keep, r, t)


def adaptive_loss(delta: Tensor, p: float, c: float) -> tuple[Tensor, Tensor]:
    """``(loss, w)``: ``mean(stopgrad(w) * D)``, ``D = ||delta||^2`` per sample, ``w = 1 / (D + c)^p``."""
    squared = delta.float().pow(2).flatten(1).sum(1)
    w = (squared.detach() + c).pow(-p)
    return (w * squared).mean(), w


def mean_flow_jvp(student: Callable[[Tensor, Tensor], Tensor], z: Tensor, t: Tensor, v: Tensor, method: str,
                  fd_step: float = 5e-3) -> tuple[Tensor, Tensor]:
    """``(u, du/dt)``: the student ``u = student(z, t)`` (with its graph) and its derivative along the flow,
    ``d_z u . v + d_t u`` (no graph), by ``torch.func.jvp`` or a central difference of step ``fd_step``."""
    if method == "autograd":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no forward-mode derivative
            u, dudt = torch.func.jvp(student, (z, t), (v, torch.ones_like(t)))
        return u, dudt.detach()
    if method != "finite_difference":
        raise ValueError(f"unknown jvp method {method!r}; choose autograd or finite_difference")
    u = student(z, t)
    with torch.no_grad():
        step = torch.as_tensor(fd_step, dtype=z.dtype, device=z.device)
        plus, minus = student(torch.cat([z + step * v, z - step * v]), torch.cat([t + fd_step, t - fd_step])).chunk(2)
        dudt = (plus - minus) / (2 * fd_step)
    return u, dudt


def meanflow_target(v: Tensor, dudt: Tensor, t: Tensor, r: Tensor) -> Tensor:
    """``u_tgt = v - (t - r) du/dt`` (the MeanFlow identity; no graph)."""
    return (v - (t - r).view(-1, *([1] * (v.ndim - 1))) * dudt).detach()


class MeanFlowRecipe:
    """MeanFlow distilling ``model`` (a flow teacher); one trainer phase, ``student``."""

    def __init__(self, model: TextToImageModel, config: MeanFlowConfig):
        check_config(config, config.KIND)
        if model.family != "flow":
            raise UserError("MeanFlow distillation needs a flow-matching teacher (an SD3-style pipeline)")
        self.model, self.config = model, config
        self.teacher = model.network.eval().requires_grad_(False)
        self.T = model.num_train_timesteps
        self.shift = float(model.config.get("shift", 1.0))
        self.time_shift = self.shift if config.time_shift is None else config.time_shift
        pooled_dim = self.teacher.config.pooled_projection_dim
        with torch.random.fork_rng(devices=[]):  # the same first layer in every run, whatever the global RNG did
            torch.manual_seed(0)
            embedder = IntervalEmbedder(pooled_dim, config.embedder_frequency_dim, config.embedder_hidden_dim)
        embedder = embedder.to(self.teacher.device)
        if self.teacher.dtype != embedder.dtype:  # ModelMixin.to warns on any dtype argument
            embedder = embedder.to(dtype=self.teacher.dtype)
        self.student = MeanFlowStudent(copy.deepcopy(self.teacher), embedder, self.T)
        if config.student_init is not None:
            load_student_weights(self.student, config.student_init)
        self.student.train().requires_grad_(True)

    # --- the Recipe protocol ----------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        return [Phase("student", list(self.student.parameters()))]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "teacher": self.teacher}

    def ema_module(self) -> str | None:
        return "student"

    def after_update(self, update: Update) -> None:
        """Nothing: the target is recomputed from the current student every step."""

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase != "student":
            raise ValueError(f"unknown phase {phase!r}; MeanFlow has one phase, student")
        if batch.latents is None:
            raise UserError("MeanFlow distillation noises real latents: set data.with_latents: true "
                            "(or data.source: images)")
        x0 = batch.latents.float()
        t, r = sample_times(x0.shape[0], self.config, self.time_shift, generator)
        t, r = t.to(x0.device), r.to(x0.device)
        eps = randn(x0.shape, generator, x0.device)
        z = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps
        batch, dropped = self.drop_captions(batch, generator)
        v = self.velocity(z, t, x0, eps, batch, dropped)

        def student(zz: Tensor, tt: Tensor) -> Tensor:  # the finite difference evaluates two copies at once
            n = zz.shape[0] // r.shape[0]
            return self.student(zz, tt, r.repeat(n), TextCondition.concat([batch.cond] * n))

        u, dudt = mean_flow_jvp(student, z, t, v, self.config.jvp, self.config.fd_step)
        delta = u - meanflow_target(v, dudt, t, r)
        total, w = adaptive_loss(delta, self.config.adaptive_p, self.config.adaptive_c)
        return Loss(total, {"meanflow": total.item(), "mse": delta.pow(2).mean().item(),
                            "weight": w.mean().item(), "r_neq_t": (r < t).float().mean().item()})

    @torch.no_grad()
    def velocity(self, z: Tensor, t: Tensor, x0: Tensor, eps: Tensor, batch: DistillBatch,
                 dropped: Tensor | None = None) -> Tensor:
        """v at (z_t, t): the guided teacher's, the conditional ``eps - x0`` (guided by the student's unconditional
        u(z_t, t, t) except on the ``dropped`` rows), or the student's u(z_t, t, t)."""
        source, w = self.config.velocity_source, self.config.guidance_scale
        if source == "teacher":
            return teacher_velocity(self.teacher, z, t, batch, w, self.T)
        if source == "student":
            return self.student(z, t, t, batch.cond)
        v = eps - x0
        if dropped is None:
            return v
        guided = w * v + (1 - w) * self.student(z, t, t, batch.uncond)
        return torch.where(dropped.to(v.device).view(-1, 1, 1, 1), v, guided)

    def drop_captions(self, batch: DistillBatch, generator: torch.Generator) -> tuple[DistillBatch, Tensor | None]:
        """Guided vanilla MeanFlow: a share ``cond_dropout`` of the rows get the empty prompt (the mask is returned);
        otherwise the batch unchanged and None."""
        if self.config.velocity_source != "conditional" or self.config.guidance_scale == 1:
            return batch, None
        dropped = torch.rand(batch.size, generator=generator) < self.config.cond_dropout
        rows = torch.arange(batch.size) + batch.size * dropped.long()
        both = batch.cond.cat(batch.uncond)
        return replace(batch, cond=both.take(rows.to(both.embeds.device))), dropped


def load_student_weights(student: MeanFlowStudent, folder: str) -> None:
    """Copy the transformer of the diffusers folder ``folder`` into ``student`` and, when the folder is a MeanFlow
    export, its interval embedder too (same architectures required)."""
    from pathlib import Path

    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    from gendistill.shipped import resolve_model_name

    root = Path(resolve_model_name(folder))
    if not (root / "transformer").is_dir():
        raise UserError(f"recipe.student_init {folder!r} is not a diffusers folder with a transformer/")
    try:
        student.transformer.load_state_dict(SD3Transformer2DModel.from_pretrained(root, subfolder="transformer")
                                            .state_dict())
        embedder = root / "interval_embedder" / "diffusion_pytorch_model.safetensors"
        if embedder.is_file():
            student.interval_embedder.load_state_dict(load_file(embedder))
    except (RuntimeError, OSError, ValueError) as err:  # another architecture, or unreadable weights
        raise UserError(f"recipe.student_init {folder!r} does not fit the student (teacher's transformer, "
                        f"recipe.embedder_* sizes): {first_line(err)}") from None


def meanflow_pipeline(teacher_pipe, student: MeanFlowStudent, scheduler=None) -> MeanFlowStableDiffusion3Pipeline:
    """The exported student: the teacher's SD3 components with the student's transformer and interval embedder,
    sampled by ``FlowMapEulerDiscreteScheduler`` with the teacher's shift (``scheduler``, the generic export's
    DDIM/LCM choice, does not apply to a flow map and is ignored)."""
    from diffusers import FlowMapEulerDiscreteScheduler

    config = teacher_pipe.scheduler.config
    flow_map = FlowMapEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000),
                                             shift=config.get("shift", 1.0))
    own = ("transformer", "scheduler", "interval_embedder")
    shared = {k: v for k, v in teacher_pipe.components.items() if k not in own}
    return MeanFlowStableDiffusion3Pipeline(**shared, transformer=student.transformer,
                                            interval_embedder=student.interval_embedder, scheduler=flow_map)


@torch.no_grad()
def sample_meanflow(student: MeanFlowStudent, noise: Tensor, cond: TextCondition, steps: int,
                    shift: float) -> Tensor:
    """gendistill's own flow-map sampler: ``steps`` jumps ``z_r = z_t - (t - r) u(z_t, r, t)`` on the grid the
    exported pipeline's scheduler visits, with its arithmetic (its output equals the pipeline's)."""
    T, dtype = student.num_train_timesteps, student.transformer.dtype
    embeds, pooled = cond.embeds.to(dtype), cond.pooled.to(dtype)

    def velocity(z, t, r):
        return interval_velocity(student.transformer, student.interval_embedder, z, t, r, embeds, pooled, T)

    z = noise.to(dtype)
    for _, z_next, _ in flow_map_steps(velocity, noise.to(dtype), flow_map_sigmas(steps, shift), T):
        z = z_next
    return z
