"""The frozen text-to-image teacher as every score-distillation method sees it.

``Teacher`` wraps a ``TextToImageModel``: its denoiser (guided or not, from the model's one denoiser factory),
a differentiable image encoder, cached prompt conditions, its training sigmas, and the start and end every
method shares (encode and noise the renders; turn a gradient into the surrogate loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.backends.text_to_image import GUIDANCE_PASSES, TextToImageModel
from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.losses import surrogate_loss
from gendistill.diffusion.timesteps import TimestepPolicy
from gendistill.score.base import GuidanceOutput, check_batch, randn


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


def image_latents(model: TextToImageModel, image: Tensor) -> Tensor:
    """One image (3, H, W) in [0, 1] as the model's latents (1, C, h, w), without gradient: what an edit or a
    style transfer starts from (:func:`encode_with_grad`'s resize and posterior mean)."""
    with torch.no_grad():
        return encode_with_grad(model, image.unsqueeze(0))


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
        self.train_sigmas = model.train_sigmas
        self._conds: dict[str, TextCondition] = {}
        self._uncond: TextCondition | None = None
        self._denoisers: dict[float, nn.Module] = {}

    @property
    def num_train_timesteps(self) -> int:
        return len(self.train_sigmas)

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] through the VAE (:func:`encode_with_grad`); a tensor of the model's
        latent shape (B, C, h, w), a latent scene's render, is already latents and passes as it is."""
        if self.is_latents(images):
            return images.float()
        return encode_with_grad(self.model, images)

    def is_latents(self, x: Tensor) -> bool:
        """Whether ``x`` has the model's latent shape (channels and size), not an image's."""
        return x.ndim == 4 and tuple(x.shape[1:]) == tuple(self.model.latent_shape(1)[1:])

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
        """The model's own denoiser; w-embedding (LCM) UNets get ``guidance`` embedded, others ignore it. A
        multi-CFG student embeds ``guidance`` as its prompt scale beside a negative scale of 0 (no negative)."""
        key = float(guidance) if self.model.embeds_guidance else 1.0
        if key not in self._denoisers:
            negative = 0.0 if self.model.negative_token is not None else None
            self._denoisers[key] = self.model.denoiser(key, negative_guidance=negative)
        return self._denoisers[key]

    @property
    def passes_per_prediction(self) -> int:
        """Network passes per guided prediction at a scale above 1: 2 under CFG, 1 when the guidance is embedded
        or distilled into the model."""
        return GUIDANCE_PASSES[self.model.guidance_kind]

    def guided(self, n: int, scale: float, rescale: float = 0.0, negative_prompt: str = "") -> CFGDenoiser:
        """``D_u + scale (D_c - D_u)`` with the negative prompt as ``u``, by the model's ``guidance_kind``: a
        w-embedding UNet gets the scale embedded and its conditional prediction is used (no negative prompt, as
        diffusers' LCM pipelines); a guidance-distilled student's conditional prediction is used as it is (its
        guidance is in its weights: CFG on top would apply it twice, at twice the cost). Scales <= 1 use the
        conditional prediction alone (diffusers' rule)."""
        kind = self.model.guidance_kind
        if kind == "embedded":
            return CFGDenoiser(self.denoiser(scale), self.unconditional(n), 1.0)
        if kind == "distilled":
            return CFGDenoiser(self.denoiser(), self.unconditional(n), 1.0)
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
        return self.noised_at(x0, t, generator)

    def noised_at(self, x0: Tensor, t: Tensor, generator: torch.Generator) -> Noised:
        """``x0`` noised at the given timestep indices ``t`` (B,), noise from ``generator``; ``x`` detached."""
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
        """The step's output: the surrogate loss of ``grad`` on ``latents`` and the logged terms."""
        grad = grad.detach()
        loss = surrogate_loss(latents, grad)
        base = {"t": noised.t.double().mean().item() / self.num_train_timesteps,
                "grad_norm": grad.flatten(1).norm(dim=1).mean().item(), "surrogate": loss.item()}
        return GuidanceOutput(grad, loss, {**base, **terms}, noised.sigma, latents)
