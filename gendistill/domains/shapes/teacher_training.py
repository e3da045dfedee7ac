"""Train the shapes teacher: the autoencoder first, then the text encoder and UNet jointly.

``train_teacher(config, out_dir, resume)`` is what ``gendistill train-teacher`` runs; this module is also a
script: ``python -m gendistill.domains.shapes.teacher_training --config FILE --out DIR [--set k=v] [--resume]``.

Layout of ``out_dir``: ``config.yaml`` (resolved config), ``cache/`` (renders and latents, remade if absent),
``checkpoints/`` (atomic, resumable), ``pipeline/`` (the exported diffusers folder with its model card).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from gendistill.config import save_config
from gendistill.domains.shapes.teacher import (
    TeacherComponents, TeacherConfig, build_components, build_training_scheduler,
)
from gendistill.domains.shapes.teacher_checkpoint import (
    TrainState, find_latest, load_checkpoint, load_or_make_latents, load_or_make_renders, save_checkpoint,
    encoder_fingerprint,
)
from gendistill.domains.shapes.teacher_data import LatentCache, RenderCache, encode_cache, render_cache
from gendistill.errors import UserError


@dataclass
class TrainResult:
    """What a call of :func:`train_teacher` produced."""

    out_dir: Path
    pipeline_dir: Path | None
    """The exported diffusers folder (None when the call stopped early)."""
    state: TrainState
    """Where training stands (phase ``done`` once finished)."""
    seconds_per_step: dict[str, float]
    """Mean wall-clock seconds per optimizer step of each phase run in this call."""


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


def train_teacher(config: TeacherConfig, out_dir: str | Path, resume: bool = False,
                  max_steps_this_run: int | None = None) -> TrainResult:
    """Train (or resume) the shapes teacher into ``out_dir`` and export ``out_dir/pipeline``.

    ``max_steps_this_run`` stops after that many optimizer steps (either phase) as if interrupted,
    leaving a checkpoint that ``resume=True`` continues from.
    """
    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    if not resume and find_latest(checkpoints) is not None:
        raise UserError(f"{checkpoints} already holds a checkpoint; pass --resume to continue it, "
                        "or choose an empty --out folder")
    if resume and find_latest(checkpoints) is None:
        raise UserError(f"--resume: no checkpoint in {checkpoints}; run without --resume to start")
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    elif config.threads < 0:
        torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    components = build_components(config.model, torch.Generator().manual_seed(config.seed))
    state = TrainState.fresh(config.seed)
    if resume:
        state = load_checkpoint(find_latest(checkpoints), components, state)
    renders = load_or_make_renders(
        out_dir / "cache" / "renders.safetensors", f"seed={config.seed} n={config.data.cache_size}",
        lambda: render_cache(config.data, config.data.cache_size, torch.Generator().manual_seed(config.seed + 1)))
    runner = _Runner(config, out_dir, components, renders, state, max_steps_this_run)
    finished = runner.run()
    pipeline_dir = None
    if finished:
        from gendistill.domains.shapes.teacher_export import export_and_report

        pipeline_dir = export_and_report(components, state, config, out_dir, runner.seconds_per_step)
    return TrainResult(out_dir, pipeline_dir, state, runner.seconds_per_step)


class _Runner:
    """Drives the two phases with progress bars and periodic checkpoints."""

    def __init__(self, config, out_dir, components, renders, state, budget):
        self.config, self.out_dir, self.components, self.renders, self.state = config, out_dir, components, renders, state
        self.budget = budget
        self.done_this_run = 0
        self.seconds_per_step: dict[str, float] = {}
        self.last_save = time.monotonic()
        self.steps_since_save = 0
        self.threads = AdaptiveThreads()

    def run(self) -> bool:
        """Run the remaining phases; False if stopped early by the step budget."""
        if self.state.phase == "vae":
            optimizer = vae_optimizer(self.components, self.config)
            self._load_optimizer(optimizer)
            if not self._loop("vae", self.config.vae.steps, optimizer, self._vae_update):
                return False
            mean, scale = center_and_scale_latents(self.components, self.renders, self.config.vae.stats_images)
            self.state.latent_mean_removed = mean.tolist()
            self.state.scaling_factor = scale
            self.state.phase, self.state.step = "diffusion", 0
            self.state.optimizer_state = None
            self._save(None)
        if self.state.phase == "diffusion":
            self._load_latents()
            self.scheduler = build_training_scheduler(self.config.model.noise)
            self.prompt_ids = PromptIds(self.components.tokenizer)
            optimizer = diffusion_optimizer(self.components, self.config)
            self._load_optimizer(optimizer)
            if not self._loop("diffusion", self.config.diffusion.steps, optimizer, self._diffusion_update):
                return False
            self.state.phase, self.state.step = "decoder", 0
            self.state.optimizer_state = None
            self._save(None)
        if self.state.phase == "decoder":
            self._load_latents()
            optimizer = torch.optim.AdamW(decoder_parameters(self.components), lr=self.config.decoder.lr,
                                          weight_decay=0.0)
            self._load_optimizer(optimizer)
            if not self._loop("decoder", self.config.decoder.steps, optimizer, self._decoder_update):
                return False
            self.state.phase = "done"
            self._save(None)
        return True

    def _load_latents(self) -> None:
        vae = self.components.vae
        self.latents = load_or_make_latents(
            self.out_dir / "cache" / "latents.safetensors", encoder_fingerprint(vae),
            lambda: encode_cache(vae, self.renders.images))

    def _decoder_update(self, optimizer):
        return decoder_step(self.components, self.latents, self.renders, self.state, optimizer, self.config)

    def _vae_update(self, optimizer):
        return vae_step(self.components, self.renders, self.state, optimizer, self.config)

    def _diffusion_update(self, optimizer):
        return diffusion_step(self.components, self.latents, self.renders, self.prompt_ids, self.state,
                              optimizer, self.config, self.scheduler)

    def _load_optimizer(self, optimizer):
        if self.state.optimizer_state is not None:
            optimizer.load_state_dict(self.state.optimizer_state)
            self.state.optimizer_state = None

    def _loop(self, phase: str, total: int, optimizer, update) -> bool:
        ckpt = self.config.checkpoint
        bar = tqdm(total=total, initial=self.state.step, desc=f"teacher/{phase}", mininterval=5.0,
                   dynamic_ncols=True, file=sys.stderr)
        start, steps = time.monotonic(), 0
        while self.state.step < total:
            if self.budget is not None and self.done_this_run >= self.budget:
                self._save(optimizer)
                bar.close()
                return False
            tick = time.monotonic()
            logs = update(optimizer)
            self.state.step += 1
            self.state.elapsed += time.monotonic() - tick
            if self.config.threads < 0:
                self.threads.record(time.monotonic() - tick)
            self.done_this_run += 1
            self.steps_since_save += 1
            steps += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            if not math.isfinite(logs["loss"]):
                raise RuntimeError(f"{phase} loss is not finite at step {self.state.step}; lower the lr")
            due_steps = ckpt.every_steps > 0 and self.steps_since_save >= ckpt.every_steps
            due_time = ckpt.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * ckpt.every_minutes
            if (due_steps or due_time) and self.state.step < total:
                self._save(optimizer)
        bar.close()
        if steps:
            self.seconds_per_step[phase] = (time.monotonic() - start) / steps
        return True

    def _save(self, optimizer) -> None:
        save_checkpoint(self.out_dir / "checkpoints", self.components, self.state, optimizer,
                        keep=self.config.checkpoint.keep)
        self.last_save = time.monotonic()
        self.steps_since_save = 0


class AdaptiveThreads:
    """threads: -1 picks 1 or 2 torch threads by timing both now and then (two threads busy-wait badly
    when other processes share the two cores, one thread is half as fast when they do not)."""

    def __init__(self, period: int = 200, probe: int = 6):
        self.period, self.probe = period, probe
        self.count = 0
        self.times: dict[int, list[float]] = {1: [], 2: []}

    def record(self, seconds: float) -> None:
        n = torch.get_num_threads()
        phase = self.count % self.period
        self.count += 1
        if phase < 2 * self.probe:
            self.times.setdefault(n, []).append(seconds)
            if phase == self.probe - 1:
                torch.set_num_threads(2 if n == 1 else 1)
            elif phase == 2 * self.probe - 1:
                best = min(self.times, key=lambda k: sorted(self.times[k])[len(self.times[k]) // 2]
                           if self.times[k] else float("inf"))
                torch.set_num_threads(best)
                self.times = {1: [], 2: []}


def main(argv: list[str] | None = None) -> int:
    """``python -m gendistill.domains.shapes.teacher_training --config FILE --out DIR [--set k=v] [--resume]``."""
    import argparse

    from gendistill.config import load_config

    parser = argparse.ArgumentParser(description="Train the shapes teacher (a tiny Stable Diffusion).")
    parser.add_argument("--config", help="YAML config (configs/shapes-teacher.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, pipeline/)")
    parser.add_argument("--resume", action="store_true", help="continue from out/checkpoints")
    parser.add_argument("--export-only", action="store_true",
                        help="export out/pipeline from the latest checkpoint without training")
    args = parser.parse_args(argv)
    try:
        config = load_config(TeacherConfig, args.config, args.set)
        if args.export_only:
            from gendistill.domains.shapes.teacher_export import export_from_checkpoint

            pipeline_dir = export_from_checkpoint(config, args.out)
        else:
            pipeline_dir = train_teacher(config, args.out, resume=args.resume).pipeline_dir
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"teacher exported to {pipeline_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
