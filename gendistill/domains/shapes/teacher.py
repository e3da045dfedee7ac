"""The shapes teacher: a tiny latent text-to-image model built from Stable Diffusion's own component classes.

``CLIPTokenizer`` (domain vocabulary) -> ``CLIPTextModel`` -> ``UNet2DConditionModel`` on 16x16x4 latents of an
``AutoencoderKL`` (64x64x3 images), with a DDIM scheduler (DDPM family). The exported folder is a standard
diffusers ``StableDiffusionPipeline`` folder (DESIGN.md §5). Training is three recipes of the one trainer
(``teacher_recipes.py``) that ``gendistill train-teacher`` (``gendistill.jobs.train_teacher``) runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from gendistill.domains.shapes.tokenizer import build_shapes_tokenizer
from gendistill.errors import check_range, key_path

# ----------------------------------------------------------------------------- configs


@dataclass
class TextEncoderConfig:
    """Size of the CLIPTextModel."""

    hidden_size: int = 128
    """Width of the text transformer (also the UNet's cross_attention_dim)."""
    num_layers: int = 3
    """Transformer layers."""
    num_heads: int = 4
    """Attention heads per layer."""
    intermediate_size: int = 256
    """Width of each MLP."""
    max_length: int = 16
    """Tokens per prompt, specials included (tokenizer model_max_length and position embeddings)."""


@dataclass
class VAEConfig:
    """Size of the AutoencoderKL (64x64x3 images <-> 16x16xC latents: two downsamplings)."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    """Channels per resolution level; n levels downsample n-1 times (3 levels: 64 -> 16)."""
    layers_per_block: int = 1
    """ResNet blocks per level."""
    latent_channels: int = 4
    """Channels of the latent."""
    norm_num_groups: int = 4
    """GroupNorm groups (must divide every block_out_channels entry). Keep several channels per group: one
    channel per group is instance norm, which erases each image's per-channel level, i.e. its colour."""


@dataclass
class UNetConfig:
    """Size and conditioning of the UNet2DConditionModel."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Channels per resolution level (16x16, 8x8, 4x4 for three levels)."""
    cross_attention: tuple[bool, ...] = (False, True, True)
    """Per level: a CrossAttn block (True) or a plain ResNet block (False)."""
    layers_per_block: int = 1
    """ResNet (+ transformer) layers per down level (up levels get one more, as in diffusers)."""
    attention_head_dim: int = 32
    """Channels per attention head."""
    norm_num_groups: int = 8
    """GroupNorm groups (must divide every block_out_channels entry; several channels per group)."""
    addition_embed_type: Literal["text", "none"] = "text"
    """"text": attention-pool the text states into the time embedding (a global route for colour and
    shape); "none": text reaches the UNet only through cross-attention."""
    addition_embed_heads: int = 4
    """Heads of the text attention pooling (addition_embed_type=text)."""


@dataclass
class NoiseConfig:
    """The DDPM-family noise schedule the teacher is trained and sampled with."""

    num_train_timesteps: int = 1000
    """Discrete training timesteps."""
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    """Beta schedule (Stable Diffusion uses scaled_linear)."""
    beta_start: float = 0.00085
    """First beta."""
    beta_end: float = 0.012
    """Last beta."""
    prediction_type: Literal["epsilon", "v_prediction"] = "v_prediction"
    """What the UNet predicts."""
    zero_terminal_snr: bool = True
    """Rescale betas so the last timestep is pure noise (needs v_prediction)."""
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"
    """How sampling timesteps are spaced (trailing starts at the last timestep: well posed for few steps)."""


@dataclass
class TeacherModelConfig:
    """All components of the teacher."""

    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Text encoder size."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """Autoencoder size."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """UNet size and conditioning."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Noise schedule."""


# ----------------------------------------------------------------------------- components


@dataclass
class TeacherComponents:
    """The five pieces of a StableDiffusionPipeline (no safety checker, no feature extractor)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DDIMScheduler


def build_text_encoder(cfg: TextEncoderConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small CLIPTextModel whose specials match ``tokenizer`` (pooling reads the first end token)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_length, projection_dim=cfg.hidden_size,
        hidden_act="gelu", attention_dropout=0.0, dropout=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """An AutoencoderKL for 64x64 RGB; scaling_factor is set after training (1 / latent std)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        sample_size=64, scaling_factor=1.0,
    )


def build_unet(cfg: UNetConfig, cross_attention_dim: int, latent_channels: int,
               sample_size: int = 16) -> UNet2DConditionModel:
    """A small UNet2DConditionModel; with addition_embed_type=text it pools the text into the time embedding."""
    if len(cfg.cross_attention) != len(cfg.block_out_channels):
        from gendistill.errors import UserError

        raise UserError(f"model.unet.cross_attention needs one entry per block_out_channels level "
                        f"({len(cfg.block_out_channels)}), got {len(cfg.cross_attention)}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention))
    heads = tuple(max(1, c // cfg.attention_head_dim) for c in cfg.block_out_channels)
    extra = {}
    if cfg.addition_embed_type == "text":
        extra = {"addition_embed_type": "text", "addition_embed_type_num_heads": cfg.addition_embed_heads}
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cross_attention_dim, attention_head_dim=heads, **extra,
    )


def scheduler_kwargs(cfg: NoiseConfig) -> dict:
    """Keyword arguments shared by the training (DDPM) and sampling (DDIM) schedulers."""
    return dict(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.zero_terminal_snr, timestep_spacing=cfg.timestep_spacing,
        clip_sample=False,
    )


def build_sampling_scheduler(cfg: NoiseConfig) -> DDIMScheduler:
    """The scheduler exported with the pipeline (DDIM, eta=0; set_alpha_to_one like SD)."""
    return DDIMScheduler(**scheduler_kwargs(cfg), set_alpha_to_one=False, steps_offset=1)


def build_training_scheduler(cfg: NoiseConfig) -> DDPMScheduler:
    """The scheduler whose add_noise / get_velocity define the training targets."""
    return DDPMScheduler(**scheduler_kwargs(cfg))


def build_components(cfg: TeacherModelConfig, generator: torch.Generator | None = None) -> TeacherComponents:
    """Fresh, randomly initialised components (seed ``generator`` for reproducible weights)."""
    if generator is not None:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    tokenizer = build_shapes_tokenizer(cfg.text.max_length)
    text_encoder = build_text_encoder(cfg.text, tokenizer)
    vae = build_vae(cfg.vae)
    unet = build_unet(cfg.unet, cfg.text.hidden_size, cfg.vae.latent_channels,
                      sample_size=64 // 2 ** (len(cfg.vae.block_out_channels) - 1))
    return TeacherComponents(tokenizer, text_encoder, vae, unet, build_sampling_scheduler(cfg.noise))


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- training configs


@dataclass
class DataConfig:
    """Where training images come from: a cache of fresh renders made once per run."""

    cache_size: int = 20000
    """Renders (random scene and camera each) made at the start and sampled from every step."""
    view_phrase_prob: float = 0.5
    """Probability that a caption carries its view phrase ("..., front view")."""
    render_batch: int = 256
    """Images rendered per make_batch call while filling the cache."""


@dataclass
class VAETrainingConfig:
    """Stage 1: the autoencoder."""

    steps: int = 2000
    """Optimizer steps (0 skips the stage)."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warmup, then exponential decay to 10% by the last step)."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    kl_weight: float = 1e-6
    """Weight of the KL term (per-element mean)."""
    mean_weight: float = 1e-3
    """Weight of the squared batch mean of the latents per channel (keeps latents near zero-mean)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction term (MSE has weight 1)."""
    stats_images: int = 2048
    """Cached images used to measure latent mean/std after training (sets scaling_factor)."""


@dataclass
class DiffusionTrainingConfig:
    """Stage 2: text encoder and UNet, trained jointly on cached latents."""

    steps: int = 8000
    """Optimizer steps (0 skips the stage)."""
    batch_size: int = 64
    """Latents per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warmup, then exponential decay to 10% by the last step)."""
    text_lr_scale: float = 1.0
    """Text encoder learning rate as a fraction of lr."""
    warmup_steps: int = 200
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    caption_dropout: float = 0.1
    """Probability a caption is replaced by "" (the unconditional prompt for guidance)."""
    min_snr_gamma: float = 0.0
    """Min-SNR loss weighting gamma; 0 disables it (plain loss on the prediction target)."""
    ema_decay: float = 0.999
    """EMA decay of the exported UNet and text encoder (the trainer's ema_decay, no warm-up); 0 disables EMA."""
    grad_clip: float = 1.0
    """Gradient-norm clip, applied to the UNet and to the text encoder separately."""


@dataclass
class DecoderTrainingConfig:
    """Stage 3: the VAE decoder alone, on latents of the frozen encoder (so the UNet's latents stay valid)."""

    steps: int = 1000
    """Optimizer steps (0 skips the stage)."""
    batch_size: int = 24
    """Latents per step."""
    lr: float = 5e-4
    """Peak AdamW learning rate (linear warmup, then exponential decay to 10% by the last step)."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction term (MSE has weight 1)."""


@dataclass
class CheckpointConfig:
    """When to write resumable checkpoints (the trainer's, one folder per stage)."""

    every_steps: int = 500
    """Checkpoint every this many steps of a stage (0: only at the end of each stage)."""
    keep: int = 2
    """Checkpoints kept on disk per stage (older ones are deleted)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "every_steps"), self.every_steps, 0)
        check_range(key_path(path, "keep"), self.keep, 1)


@dataclass
class EvalConfig:
    """The evaluation run after training (needs the shapes classifier)."""

    enabled: bool = True
    """Evaluate the exported pipeline and put the numbers in the model card."""
    guidance_scale: float = 2.0
    """Default classifier-free guidance scale (stored in the model card and gendistill.json)."""
    steps: tuple[int, ...] = (1, 2, 4, 8, 25, 50)
    """Sampling step counts to evaluate."""
    images_per_scene: int = 8
    """Images per (shape, colour) scene at each step count (40 scenes)."""
    classifier_dir: str = "shapes-classifier"
    """Folder of the shapes classifier, or the shipped one's short name (load_classifier)."""
    seed: int = 1234
    """Seed of the evaluation noise."""
    timing: bool = True
    """Also time one stock-pipeline call of 64 images at 50 guided steps (the model card quotes it)."""


@dataclass
class TeacherConfig:
    """Everything `gendistill train-teacher` needs."""

    seed: int = 0
    """Seed of weights, renders, noise and caption choices."""
    threads: int = 2
    """torch CPU threads (0: leave torch's default; -1: switch between 1 and 2 by timing both every 200
    steps, for machines whose cores other processes share)."""
    model: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    """Component sizes and noise schedule."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training renders."""
    vae: VAETrainingConfig = field(default_factory=VAETrainingConfig)
    """Autoencoder stage."""
    diffusion: DiffusionTrainingConfig = field(default_factory=DiffusionTrainingConfig)
    """Text encoder + UNet stage."""
    decoder: DecoderTrainingConfig = field(default_factory=DecoderTrainingConfig)
    """VAE-decoder fine-tuning stage."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable checkpoints."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation after training."""
