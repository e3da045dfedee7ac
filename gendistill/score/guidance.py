"""Score distillation: a frozen text-to-image teacher as a loss on rendered images.

Every method is DESIGN.md §2's one distribution-matching gradient. The images (B, 3, H, W) in [0, 1], from any
renderer, are resized to the teacher's resolution and encoded by its VAE *with* gradient to latents ``x0``;
the policy picks a timestep per image, ``x = x0 + sigma * eps``, and

    grad = w(sigma) * dm_gradient(x0, real_x0, fake_x0, sigma, "sds") = w(sigma) * (fake_x0 - real_x0) / sigma,

which is in epsilon units. ``surrogate_loss(x0, grad)`` (mean over the batch) turns it into a loss whose
gradient with respect to ``x0`` is ``grad / B``, so ``loss.backward()`` carries it through the VAE encoder to
the images and on to whatever rendered them. The methods differ only in ``real_x0`` and ``fake_x0``
(``D_c``, ``D_u``, ``D_n``: the teacher's x0 for the prompt, the empty prompt and the negative prompt):

- SDS (DreamFusion, Poole et al. 2022): ``real = D_u + s (D_c - D_u)``, ``fake = x0``, so
  ``grad = w (eps_hat - eps)``: the injected noise stands in for the fake score.
- CSD (classifier score distillation, Yu et al. 2023, with its negative-prompt form): ``fake = D_u``,
  ``real = D_u + w_pos (D_c - D_u) - w_neg (D_n - D_u)``, so
  ``grad = w [w_pos (eps_c - eps_u) - w_neg (eps_n - eps_u)]``: the classifier scores alone, no noise term.
- NPG (HumanGaussian's annealed negative prompt guidance, Liu et al. 2024; see ``NegativePromptGuidance``).
- VSD (ProlificDreamer, Wang et al. 2023): ``real`` as SDS, ``fake`` a LoRA fake score (vsd.py).

``w(sigma)``: "sds" is DreamFusion's ``1 - abar_t = sigma^2 / (1 + sigma^2)``; "uniform" is 1; "snr" is
``sigma = SNR^-1/2``, which makes the gradient the x0 residual ``fake_x0 - real_x0`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.losses import dm_gradient, surrogate_loss
from gendistill.diffusion.schedules import flow_time_to_sigma, vp_sigmas_from_alphas_cumprod
from gendistill.errors import UserError, check_choice, check_range
from gendistill.score.policies import LinearRamp, TimestepPolicy, UniformRange, timestep_index

if TYPE_CHECKING:
    from gendistill.score.vsd import VSDConfig

Weighting = Literal["sds", "uniform", "snr"]
WEIGHTINGS = ("sds", "uniform", "snr")
NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
                        "low-resolution, gloomy")
"""The negative prompt of noise-free score distillation (Katzir et al. 2023), which HumanGaussian's code uses."""


@dataclass
class GuidanceOutput:
    """One score-distillation step: ``loss.backward()`` sends ``grad`` back to the images."""

    grad: Tensor
    """Per-image gradient on the latents, (B, C, h, w), detached (epsilon units times w)."""
    loss: Tensor
    """Surrogate scalar: its gradient with respect to ``latents`` is ``grad / B``."""
    terms: dict[str, float]
    """Named values for logging: mean timestep fraction ``t``, mean per-image ``grad_norm``, ``surrogate``, ..."""
    sigma: Tensor
    """The noise level of each image, (B,)."""
    latents: Tensor
    """The encoded images, (B, C, h, w), still attached to the images' graph."""


class ScoreGuidance(Protocol):
    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, cameras: Tensor | None = None) -> GuidanceOutput:
        """The guidance on ``images`` (B, 3, H, W) in [0, 1], one prompt per image, at ``step`` of
        ``total_steps``. Randomness (timesteps first, then noise) comes from ``generator`` only. ``cameras``
        (B, camera_dim) is read by methods whose fake score is camera-conditioned (VSD); others ignore it."""


# --- the teacher as score-distillation sees it -----------------------------------------------------


def teacher_train_sigmas(model: TextToImageModel) -> Tensor:
    """Sigma of each training timestep, (T,), float64: VP ``sqrt((1 - abar) / abar)``; flow models use flow
    times ``t = k / T``, k = 1..T, as ``sigma = t / (1 - t)`` (capped)."""
    if model.family == "vp":
        return vp_sigmas_from_alphas_cumprod(model.alphas_cumprod)
    T = int(model.config.get("num_train_timesteps", 1000))
    return flow_time_to_sigma(torch.arange(1, T + 1, dtype=torch.float64) / T)


def encode_with_grad(model: TextToImageModel, images: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] to pipeline latents, differentiably: bilinear resize to the model's
    resolution (antialiased), then the VAE posterior *mean* times the scaling factor (minus the shift
    factor for flow models). Deterministic, unlike ``TextToImageModel.encode_images``' posterior sample."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    vae = model.pipe.vae
    size = model.image_size()
    if tuple(images.shape[-2:]) != size:
        images = F.interpolate(images, size, mode="bilinear", align_corners=False, antialias=True)
    latents = vae.encode((images * 2 - 1).to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
    if getattr(vae.config, "shift_factor", None) is not None and model.family == "flow":
        latents = latents - vae.config.shift_factor
    return (latents * vae.config.scaling_factor).float()


def guidance_weight(sigma: Tensor, weighting: Weighting) -> Tensor:
    """``w(sigma)`` per image, (B,)."""
    if weighting == "sds":
        return sigma**2 / (1 + sigma**2)
    if weighting == "uniform":
        return torch.ones_like(sigma)
    if weighting == "snr":
        return sigma
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def randn(shape, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved next to ``like``."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device=like.device, dtype=like.dtype)


@dataclass
class Noised:
    """``x = x0 + sigma * eps`` at timestep indices ``t``."""

    x: Tensor
    sigma: Tensor
    t: Tensor
    noise: Tensor


class Teacher:
    """A frozen ``TextToImageModel`` as every score-distillation method uses it: its denoiser (guided or
    not), a differentiable image encoder, cached prompt conditions and its training sigmas.

    Freezes every module of the pipeline (``requires_grad_(False)``): gradients pass *through* the VAE and
    never accumulate in it. Prompt conditions are cached by string (the text encoder is frozen)."""

    def __init__(self, model: TextToImageModel):
        self.model = model
        for module in model.pipe.components.values():
            if isinstance(module, nn.Module):
                module.requires_grad_(False)
        self.train_sigmas = teacher_train_sigmas(model)
        self._conds: dict[str, TextCondition] = {}
        self._uncond: TextCondition | None = None
        self._denoisers: dict[float, nn.Module] = {}

    @property
    def num_train_timesteps(self) -> int:
        return len(self.train_sigmas)

    def encode(self, images: Tensor) -> Tensor:
        return encode_with_grad(self.model, images)

    def conditions(self, prompts: Sequence[str]) -> TextCondition:
        """The prompts' conditions, one row each."""
        missing = sorted({p for p in prompts if p not in self._conds})
        if missing:
            with torch.no_grad():
                cond, _ = self.model.encode_batch(list(missing))
            self._conds.update({p: cond.row(i) for i, p in enumerate(missing)})
        rows = [self._conds[p] for p in prompts]
        fields = zip(*((r.embeds, r.pooled, r.time_ids) for r in rows))
        return TextCondition(*(None if f[0] is None else torch.cat(f) for f in fields))

    def unconditional(self, n: int) -> TextCondition:
        """The empty prompt's condition (as the pipeline makes it: zeros for SDXL), ``n`` rows."""
        if self._uncond is None:
            with torch.no_grad():
                self._uncond = self.model.encode_batch([""])[1]
        return self._uncond.repeat(n)

    def negative(self, prompt: str, n: int) -> TextCondition:
        """A negative prompt's condition, ``n`` rows; the empty prompt is the unconditional one."""
        return self.conditions([prompt] * n) if prompt else self.unconditional(n)

    def denoiser(self, guidance: float = 1.0) -> nn.Module:
        """The model's own denoiser; w-embedding (LCM) UNets get ``guidance`` embedded, others ignore it."""
        key = float(guidance) if self.model.embeds_guidance else 1.0
        if key not in self._denoisers:
            self._denoisers[key] = self.model.denoiser(key)
        return self._denoisers[key]

    def guided(self, n: int, scale: float, rescale: float = 0.0, negative_prompt: str = "") -> CFGDenoiser:
        """``D_u + scale (D_c - D_u)`` with the negative prompt as ``u``. A w-embedding UNet has the scale
        distilled in: it is embedded and its conditional prediction used (no negative prompt, as diffusers'
        LCM pipelines). Scales <= 1 use the conditional prediction alone (diffusers' rule)."""
        if self.model.embeds_guidance:
            return CFGDenoiser(self.denoiser(scale), self.unconditional(n), 1.0)
        return CFGDenoiser(self.denoiser(), self.negative(negative_prompt, n), scale, rescale)

    def branches(self, x: Tensor, sigma: Tensor, conds: list[TextCondition]) -> list[Tensor]:
        """The unguided denoiser under each condition, in one batched call (no gradient)."""
        k = len(conds)
        with torch.no_grad():
            out = self.denoiser()(torch.cat([x] * k), torch.cat([sigma] * k), TextCondition.concat(conds))
        return list(out.chunk(k))

    def noised(self, x0: Tensor, policy: TimestepPolicy, step: int, total_steps: int,
               generator: torch.Generator) -> Noised:
        """Timesteps from ``policy`` (drawn first), then noise, both from ``generator``; ``x`` is detached."""
        t = policy.timesteps(step, total_steps, x0.shape[0], generator, self.num_train_timesteps)
        sigma = self.train_sigmas[t].to(device=x0.device, dtype=x0.dtype)
        noise = randn(x0.shape, generator, x0)
        return Noised(x0.detach() + expand_sigma(sigma, x0) * noise, sigma, t, noise)

    def prepare(self, images: Tensor, prompts: Sequence[str], policy: TimestepPolicy, step: int,
                total_steps: int, generator: torch.Generator) -> tuple[Tensor, Noised]:
        """Every method's start: check one prompt per image, encode (with grad), draw t and noise."""
        check_batch(images, prompts)
        latents = self.encode(images)
        return latents, self.noised(latents, policy, step, total_steps, generator)

    def output(self, latents: Tensor, grad: Tensor, noised: Noised, terms: dict[str, float]) -> GuidanceOutput:
        grad = grad.detach()
        loss = surrogate_loss(latents, grad)
        base = {"t": noised.t.double().mean().item() / self.num_train_timesteps,
                "grad_norm": grad.flatten(1).norm(dim=1).mean().item(), "surrogate": loss.item()}
        return GuidanceOutput(grad, loss, {**base, **terms}, noised.sigma, latents)


def check_batch(images: Tensor, prompts: Sequence[str]) -> None:
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        raise ValueError(f"need one prompt per image: {images.shape[0]} images, "
                         f"{1 if isinstance(prompts, str) else len(prompts)} prompts")


def weighted(grad: Tensor, sigma: Tensor, weighting: Weighting) -> Tensor:
    return expand_sigma(guidance_weight(sigma, weighting), grad) * grad


# --- SDS ------------------------------------------------------------------------------------------


@dataclass
class SDSConfig:
    """Score distillation sampling (DreamFusion): the guided teacher's noise prediction minus the noise."""

    KIND: ClassVar[str] = "sds"

    guidance_scale: float = 100.0
    """CFG scale of the real score (DreamFusion: 100); <= 1 uses the conditional prediction alone."""
    guidance_rescale: float = 0.0
    """Guidance rescale (Lin et al. 2023) in [0, 1]; 0 turns it off."""
    negative_prompt: str = ""
    """Takes the empty prompt's place in CFG, as diffusers' negative prompt; empty: unconditional."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t: the gradient is the x0 residual)."""
    timesteps: TimestepPolicy = field(default_factory=UniformRange)
    """Which training timesteps each step uses."""


class SDS:
    """``grad = w(t) (eps_hat(x_t; y) - eps)`` with ``eps_hat`` the teacher's CFG prediction."""

    def __init__(self, model: TextToImageModel, config: SDSConfig):
        check_range("sds.guidance_rescale", config.guidance_rescale, 0.0, 1.0)
        check_choice("sds.weighting", config.weighting, WEIGHTINGS)
        self.teacher, self.config = Teacher(model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, cameras: Tensor | None = None) -> GuidanceOutput:
        c = self.config
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        real_score = self.teacher.guided(len(prompts), c.guidance_scale, c.guidance_rescale, c.negative_prompt)
        with torch.no_grad():
            real = real_score(noised.x, noised.sigma, self.teacher.conditions(prompts))
        grad = dm_gradient(latents, real, latents, noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised, {})


# --- CSD ------------------------------------------------------------------------------------------


@dataclass
class CSDConfig:
    """Classifier score distillation (Yu et al. 2023): only the classifier term eps_c - eps_u."""

    KIND: ClassVar[str] = "csd"

    guidance_weight: float = 1.0
    """w_pos, the weight of eps_c - eps_u (the paper's code: 1; scale the learning rate instead)."""
    negative_prompt: str = ""
    """Negative prompt whose classifier score eps_n - eps_u is subtracted; empty: no negative term."""
    negative_weight: LinearRamp = field(default_factory=lambda: LinearRamp(1.0, 1.0))
    """w_neg over training (the paper's Stable Diffusion config: 1 -> 0.5 over 10k steps)."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t)."""
    timesteps: TimestepPolicy = field(default_factory=UniformRange)
    """Which training timesteps each step uses."""


class CSD:
    """``grad = w(t) [w_pos (eps_c - eps_u) - w_neg(step) (eps_n - eps_u)]`` (no ``- eps`` term)."""

    def __init__(self, model: TextToImageModel, config: CSDConfig):
        check_choice("csd.weighting", config.weighting, WEIGHTINGS)
        self.teacher, self.config = Teacher(model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, cameras: Tensor | None = None) -> GuidanceOutput:
        c, n = self.config, len(prompts)
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        conds = [self.teacher.unconditional(n), self.teacher.conditions(prompts)]
        w_neg = c.negative_weight.value(step) if c.negative_prompt else 0.0
        if w_neg != 0.0:
            conds.append(self.teacher.negative(c.negative_prompt, n))
        d = self.teacher.branches(noised.x, noised.sigma, conds)
        real = d[0] + c.guidance_weight * (d[1] - d[0])
        if w_neg != 0.0:
            real = real - w_neg * (d[2] - d[0])
        grad = dm_gradient(latents, real, d[0], noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised,
                                   {"negative_weight": w_neg})


# --- HumanGaussian's annealed negative prompt guidance --------------------------------------------


@dataclass
class NPGConfig:
    """Annealed negative prompt guidance (HumanGaussian): classifier score plus an annealed negative score."""

    KIND: ClassVar[str] = "npg"

    guidance_scale: float = 7.5
    """s, the weight of the classifier score eps_c - eps_u (HumanGaussian: 7.5)."""
    negative_prompt: str = NFSD_NEGATIVE_PROMPT
    """The prompt whose score is steered away from (must not be empty)."""
    negative_scale: LinearRamp = field(default_factory=lambda: LinearRamp(1.0, 1.0))
    """lambda over training, the weight of eps_u - eps_n (HumanGaussian: 1)."""
    negative_t_min: float = 0.2
    """The negative term is on only at timesteps >= this fraction of T (HumanGaussian: 200 of 1000)."""
    domain_score: Literal["nfsd", "sds"] = "nfsd"
    """Remaining term: "nfsd" (HumanGaussian's code: eps_u below negative_t_min, none above) or "sds"
    (eps_u - eps everywhere: SDS plus a negative term)."""
    weighting: Weighting = "sds"
    """w(t): "sds" (1 - abar_t), "uniform" (1) or "snr" (sigma_t)."""
    timesteps: TimestepPolicy = field(default_factory=UniformRange)
    """Which training timesteps each step uses (HumanGaussian anneals t_max from 0.98 to 0.5: AnnealedMax)."""


class NegativePromptGuidance:
    """HumanGaussian's annealed negative prompt guidance (Liu et al. 2024). It splits the SDS score
    into a classifier score ``s (eps_c - eps_u)`` and a noisy domain score, and replaces the latter by the
    negative prompt's score ``eps_u - eps_n`` at large timesteps. With ``m(t) = [t >= negative_t_min]`` and
    ``lambda`` the annealed negative scale:

    - "nfsd" (HumanGaussian's released code, which cites noise-free score distillation, Katzir et al. 2023,
      eq. 6): ``grad = w(t) [s (eps_c - eps_u) + m lambda (eps_u - eps_n) + (1 - m) eps_u]``;
    - "sds": ``grad = w(t) [s (eps_c - eps_u) + m lambda (eps_u - eps_n) + (eps_u - eps)]``, i.e. SDS whose
      guided prediction has the extra term ``- m lambda (eps_n - eps_u)``. With ``lambda = s - 1`` and
      ``negative_t_min = 0`` this is SDS with the unconditional branch replaced by the negative prompt's.

    In x0 units both are one ``dm_gradient``: ``real = D_u + s (D_c - D_u) - m lambda (D_n - D_u)`` and
    ``fake = x0`` ("sds") or ``m D_u + (1 - m) x`` ("nfsd")."""

    def __init__(self, model: TextToImageModel, config: NPGConfig):
        if not config.negative_prompt:
            raise UserError("npg.negative_prompt is empty: negative prompt guidance needs a prompt to steer away from")
        check_range("npg.negative_t_min", config.negative_t_min, 0.0, 1.0)
        check_choice("npg.domain_score", config.domain_score, ("nfsd", "sds"))
        check_choice("npg.weighting", config.weighting, WEIGHTINGS)
        self.teacher, self.config = Teacher(model), config

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, cameras: Tensor | None = None) -> GuidanceOutput:
        c, n = self.config, len(prompts)
        latents, noised = self.teacher.prepare(images, prompts, c.timesteps, step, total_steps, generator)
        conds = [self.teacher.unconditional(n), self.teacher.conditions(prompts),
                 self.teacher.negative(c.negative_prompt, n)]
        d_u, d_c, d_n = self.teacher.branches(noised.x, noised.sigma, conds)
        lam = c.negative_scale.value(step)
        t_neg = timestep_index(c.negative_t_min, self.teacher.num_train_timesteps)
        m = expand_sigma((noised.t >= t_neg).to(device=latents.device, dtype=latents.dtype), latents)
        real = d_u + c.guidance_scale * (d_c - d_u) - m * lam * (d_n - d_u)
        fake = latents.detach() if c.domain_score == "sds" else m * d_u + (1 - m) * noised.x
        grad = dm_gradient(latents, real, fake, noised.sigma, weighting="sds")
        return self.teacher.output(latents, weighted(grad, noised.sigma, c.weighting), noised,
                                   {"negative_scale": lam, "negative_on": m.mean().item()})


# --- construction ---------------------------------------------------------------------------------

METHODS = ("sds", "csd", "npg", "vsd")


def guidance_from_model(model: TextToImageModel, method: str,
                        config: SDSConfig | CSDConfig | NPGConfig | VSDConfig | None = None) -> ScoreGuidance:
    """The guidance ``method`` ("sds", "csd", "npg" or "vsd") on ``model`` (any VP or flow pipeline,
    distilled students included; VSD needs a UNet), with ``config`` or the method's defaults."""
    from gendistill.score.vsd import VSD, VSDConfig

    check_choice("score distillation method", method, METHODS)
    guidance_cls, config_cls = {"sds": (SDS, SDSConfig), "csd": (CSD, CSDConfig),
                                "npg": (NegativePromptGuidance, NPGConfig), "vsd": (VSD, VSDConfig)}[method]
    config = config_cls() if config is None else config
    if not isinstance(config, config_cls):
        raise UserError(f"method {method!r} takes a {config_cls.__name__}, got a {type(config).__name__}")
    return guidance_cls(model, config)
