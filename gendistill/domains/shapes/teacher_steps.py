"""One optimizer step of each phase of the shapes teacher's training: the autoencoder (encoder + decoder),
the decoder refit on the final latents, and the diffusion model (text encoder + UNet), plus their learning
rate schedule, loss weights and EMA. ``teacher_training`` orchestrates them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.domains.shapes.teacher import TeacherComponents, TeacherConfig
from gendistill.domains.shapes.teacher_checkpoint import TrainState
from gendistill.domains.shapes.teacher_data import LatentCache, RenderCache, encode_cache


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to 10% of it at ``total``."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    progress = min(1.0, step / max(1, total))
    return peak * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- phase 1: VAE


def vae_optimizer(components: TeacherComponents, config: TeacherConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(components.vae.parameters(), lr=config.vae.lr, weight_decay=0.0)


def vae_step(components: TeacherComponents, renders: RenderCache, state: TrainState,
             optimizer: torch.optim.Optimizer, config: TeacherConfig) -> dict[str, float]:
    """One autoencoder update: MSE + L1 + small KL + squared batch mean of the latents."""
    cfg = config.vae
    vae = components.vae
    idx = torch.randint(0, len(renders), (cfg.batch_size,), generator=state.data_gen)
    x = renders.images[idx].float() / 127.5 - 1.0
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=state.noise_gen)
    recon = vae.decode(z).sample
    mse = F.mse_loss(recon, x)
    kl = posterior.kl().mean() / z[0].numel()
    mean_penalty = z.mean(dim=(0, 2, 3)).pow(2).sum()
    loss = mse + cfg.l1_weight * (recon - x).abs().mean() + cfg.kl_weight * kl + cfg.mean_weight * mean_penalty
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.step, cfg.lr, cfg.warmup_steps, cfg.steps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    optimizer.step()
    return {"loss": loss.item(), "psnr": 10 * math.log10(4.0 / max(mse.item(), 1e-10)), "kl": kl.item()}


@torch.no_grad()
def center_and_scale_latents(components: TeacherComponents, renders: RenderCache, n: int) -> tuple[Tensor, float]:
    """Fold the latent channel means into the VAE's conv biases (exact), then set scaling_factor = 1/std.

    Stock SD pipelines only divide by ``scaling_factor``, so zero-mean latents must come from the VAE
    itself: ``quant_conv`` shifts the posterior mean by ``-m`` and ``post_quant_conv`` adds ``W m`` back.
    Returns the removed per-channel mean and the new scaling factor.
    """
    vae = components.vae
    latents = encode_cache(vae, renders.images[:n]).mean
    channels = latents.shape[1]
    m = latents.mean(dim=(0, 2, 3))
    vae.quant_conv.bias[:channels] -= m
    vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ m
    std = float((latents - m[None, :, None, None]).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return m, 1.0 / std


# ----------------------------------------------------------------------------- phase 3: decoder


def decoder_parameters(components: TeacherComponents) -> list[torch.nn.Parameter]:
    return list(components.vae.decoder.parameters()) + list(components.vae.post_quant_conv.parameters())


def decoder_step(components: TeacherComponents, latents: LatentCache, renders: RenderCache, state: TrainState,
                 optimizer: torch.optim.Optimizer, config: TeacherConfig) -> dict[str, float]:
    """One decoder update on a fresh posterior sample of cached latents (the encoder is not touched)."""
    cfg = config.decoder
    idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=state.data_gen)
    z = latents.sample(idx, state.noise_gen)
    x = renders.images[idx].float() / 127.5 - 1.0
    recon = components.vae.decode(z).sample
    mse = F.mse_loss(recon, x)
    loss = mse + cfg.l1_weight * (recon - x).abs().mean()
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.step, cfg.lr, cfg.warmup_steps, cfg.steps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(decoder_parameters(components), 1.0)
    optimizer.step()
    return {"loss": loss.item(), "psnr": 10 * math.log10(4.0 / max(mse.item(), 1e-10))}


# ----------------------------------------------------------------------------- phase 2: text encoder + UNet


def diffusion_parameters(components: TeacherComponents, config: TeacherConfig) -> list[dict]:
    cfg = config.diffusion
    return [
        {"params": list(components.unet.parameters()), "lr_scale": 1.0},
        {"params": list(components.text_encoder.parameters()), "lr_scale": cfg.text_lr_scale},
    ]


def diffusion_optimizer(components: TeacherComponents, config: TeacherConfig) -> torch.optim.Optimizer:
    cfg = config.diffusion
    return torch.optim.AdamW(diffusion_parameters(components, config), lr=cfg.lr, weight_decay=cfg.weight_decay)


class PromptIds:
    """Tokenizes prompts exactly as StableDiffusionPipeline does (padded to max length), memoised."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, Tensor] = {}

    def __call__(self, prompts: list[str]) -> Tensor:
        missing = [p for p in set(prompts) if p not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[p] for p in prompts])


def sample_prompts(renders: RenderCache, idx: Tensor, generator: torch.Generator, view_prob: float,
                   dropout: float) -> list[str]:
    """Caption of each picked render: with its view phrase (prob ``view_prob``) or "" (prob ``dropout``)."""
    use_view = torch.rand(len(idx), generator=generator) < view_prob
    drop = torch.rand(len(idx), generator=generator) < dropout
    out = []
    for i, v, d in zip(idx.tolist(), use_view.tolist(), drop.tolist()):
        out.append("" if d else (renders.view_captions[i] if v else renders.captions[i]))
    return out


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


def diffusion_step(components: TeacherComponents, latents: LatentCache, renders: RenderCache,
                   prompt_ids: PromptIds, state: TrainState, optimizer: torch.optim.Optimizer,
                   config: TeacherConfig, scheduler) -> dict[str, float]:
    """One joint update of text encoder and UNet on noised cached latents."""
    cfg = config.diffusion
    idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=state.data_gen)
    prompts = sample_prompts(renders, idx, state.data_gen, config.data.view_phrase_prob, cfg.caption_dropout)
    z0 = latents.sample(idx, state.noise_gen) * state.scaling_factor
    noise = torch.randn(z0.shape, generator=state.noise_gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=state.noise_gen)
    zt = scheduler.add_noise(z0, noise, t)
    prediction = config.model.noise.prediction_type
    target = scheduler.get_velocity(z0, noise, t) if prediction == "v_prediction" else noise
    hidden = components.text_encoder(prompt_ids(prompts))[0]
    pred = components.unet(zt, t, hidden).sample
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
    loss = (per_sample * loss_weights(scheduler, t, cfg.min_snr_gamma, prediction)).mean()
    base = lr_at(state.step, cfg.lr, cfg.warmup_steps, cfg.steps)
    for group in optimizer.param_groups:
        group["lr"] = base * group["lr_scale"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    update_ema(state, components, cfg.ema_decay)
    return {"loss": loss.item(), "mse": per_sample.mean().item()}


@torch.no_grad()
def update_ema(state: TrainState, components: TeacherComponents, decay: float) -> None:
    """EMA of UNet and text-encoder weights, with the usual (1+n)/(10+n) warmup of the decay."""
    if decay <= 0:
        return
    d = min(decay, (1 + state.step) / (10 + state.step))
    current = ema_source(components)
    if not state.ema:
        state.ema = {k: v.detach().clone() for k, v in current.items()}
        return
    for k, v in current.items():
        state.ema[k].lerp_(v.detach(), 1 - d)


def ema_source(components: TeacherComponents) -> dict[str, Tensor]:
    out = {f"unet.{k}": v for k, v in components.unet.state_dict().items() if v.is_floating_point()}
    out.update({f"text_encoder.{k}": v for k, v in components.text_encoder.state_dict().items()
                if v.is_floating_point()})
    return out


# ----------------------------------------------------------------------------- the loop
