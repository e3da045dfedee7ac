"""The shapes flow teacher: an SD3-shaped flow-matching model of the shapes world.

``StableDiffusion3Pipeline`` components: a small ``SD3Transformer2DModel`` (MMDiT) on the 16x16x4 latents of
the shipped VP teacher's ``AutoencoderKL``, that teacher's CLIP text encoder as both of SD3's CLIP encoders
(a ``CLIPTextModelWithProjection`` with an identity projection, so the pooled embedding is CLIP's own), no
T5 (SD3's pipeline then feeds zeros in its place), and ``FlowMatchEulerDiscreteScheduler``. The VAE and the
text encoder are frozen (issue 14 allows reusing them); only the transformer is trained, by rectified flow
matching with logit-normal timesteps (Esser et al., "Scaling Rectified Flow Transformers for High-Resolution
Image Synthesis", ICML 2024, eq. 1 and §3.1): ``x_t = (1 - t) x0 + t eps``, target velocity ``eps - x0``.
``gendistill train-teacher --config shapes-flow-teacher`` runs it (``gendistill.jobs.train_flow_teacher``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from gendistill.domains.shapes.teacher import CheckpointConfig, DataConfig, EvalConfig, count_parameters
from gendistill.errors import UserError, check_range, key_path

# ----------------------------------------------------------------------------- configs


@dataclass
class TransformerConfig:
    """Size of the SD3Transformer2DModel (inner width = heads x head_dim)."""

    num_layers: int = 4
    """Joint (MMDiT) transformer blocks."""
    num_attention_heads: int = 4
    """Attention heads per block."""
    attention_head_dim: int = 32
    """Channels per head."""
    patch_size: int = 2
    """Latent pixels per patch side (16x16 latents -> 8x8 = 64 image tokens at 2)."""


@dataclass
class FlowNoiseConfig:
    """Flow-matching timesteps: where training samples t, and the sampler's shift."""

    shift: float = 1.0
    """FlowMatchEulerDiscreteScheduler's timestep shift at sampling (SD3: 3.0 at 1024 px; 1 suits 16x16)."""
    logit_mean: float = 0.0
    """Mean of the logit-normal training timesteps (SD3's rf/lognorm(0, 1))."""
    logit_std: float = 1.0
    """Standard deviation of the logit-normal training timesteps."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "shift"), self.shift, 1e-3)
        check_range(key_path(path, "logit_std"), self.logit_std, 1e-3)


@dataclass
class FlowTrainingConfig:
    """The transformer's training (the only stage: the VAE and text encoder come trained from ``base``)."""

    steps: int = 6000
    """Optimizer steps."""
    batch_size: int = 32
    """Latents per step."""
    lr: float = 5e-4
    """Peak AdamW learning rate (linear warmup, then exponential decay to 10% by the last step)."""
    warmup_steps: int = 200
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    caption_dropout: float = 0.1
    """Probability a caption is replaced by "" (the unconditional prompt for guidance)."""
    ema_decay: float = 0.999
    """EMA decay of the exported transformer (0 disables EMA)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""


@dataclass
class FlowTeacherConfig:
    """Everything `gendistill train-teacher --config shapes-flow-teacher` needs."""

    KIND: ClassVar[str] = "flow"

    seed: int = 0
    """Seed of the transformer's weights, the renders, the noise and the caption choices."""
    threads: int = 2
    """torch CPU threads (0: torch's default; -1: switch between 1 and 2 by timing both)."""
    base: str = "shapes-teacher"
    """The trained VP teacher (folder or shipped name) whose VAE, tokenizer and text encoder are reused, frozen."""
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    """Transformer size."""
    noise: FlowNoiseConfig = field(default_factory=FlowNoiseConfig)
    """Training timesteps and the sampling shift."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training renders."""
    diffusion: FlowTrainingConfig = field(default_factory=FlowTrainingConfig)
    """The transformer's training."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable checkpoints."""
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(steps=(1, 2, 4, 8, 28)))
    """Evaluation after training (the stock StableDiffusion3Pipeline at each step count)."""


# ----------------------------------------------------------------------------- components


@dataclass
class FlowTeacherComponents:
    """The parts of a StableDiffusion3Pipeline without T5 (one CLIP encoder serves as both of SD3's)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModelWithProjection
    vae: AutoencoderKL
    transformer: SD3Transformer2DModel
    scheduler: FlowMatchEulerDiscreteScheduler

    def pipeline(self, transformer: SD3Transformer2DModel | None = None):
        """A stock ``StableDiffusion3Pipeline`` of these parts (``transformer`` replaces the trained one)."""
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=transformer or self.transformer, scheduler=self.scheduler, vae=self.vae,
            text_encoder=self.text_encoder, tokenizer=self.tokenizer, text_encoder_2=self.text_encoder,
            tokenizer_2=self.tokenizer, text_encoder_3=None, tokenizer_3=None)

    def parameters(self) -> dict[str, int]:
        return {"text_encoder": count_parameters(self.text_encoder), "vae": count_parameters(self.vae),
                "transformer": count_parameters(self.transformer)}


def clip_with_identity_projection(text_encoder) -> CLIPTextModelWithProjection:
    """``text_encoder`` (a CLIPTextModel) as a CLIPTextModelWithProjection whose projection is the identity,
    so SD3's pooled embedding is CLIP's pooled (final-norm end-token) state."""
    config = text_encoder.config
    if config.projection_dim != config.hidden_size:
        config = type(config)(**{**config.to_dict(), "projection_dim": config.hidden_size})
    projected = CLIPTextModelWithProjection(config)
    try:
        # transformers 5 flattened CLIPTextModel (its weights are the bare text transformer); 4 nests a text_model
        projected.text_model.load_state_dict(getattr(text_encoder, "text_model", text_encoder).state_dict())
    except RuntimeError as err:
        raise UserError(f"the base text encoder does not fit CLIPTextModelWithProjection: "
                        f"{str(err).splitlines()[0]}") from None
    with torch.no_grad():
        projected.text_projection.weight.copy_(torch.eye(config.hidden_size))
    return projected


def build_transformer(cfg: TransformerConfig, text_width: int, latent_channels: int,
                      sample_size: int) -> SD3Transformer2DModel:
    """A small MMDiT; the context is SD3's CLIP concat (2 x ``text_width`` channels, no T5 padding needed)."""
    if sample_size % cfg.patch_size:
        raise UserError(f"transformer.patch_size {cfg.patch_size} must divide the latent size {sample_size}")
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    return SD3Transformer2DModel(
        sample_size=sample_size, patch_size=cfg.patch_size, in_channels=latent_channels,
        out_channels=latent_channels, num_layers=cfg.num_layers, attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads, joint_attention_dim=2 * text_width,
        caption_projection_dim=inner, pooled_projection_dim=2 * text_width,
        pos_embed_max_size=sample_size // cfg.patch_size)


def build_flow_components(config: FlowTeacherConfig, generator: torch.Generator | None = None
                          ) -> FlowTeacherComponents:
    """The base teacher's tokenizer, text encoder and VAE (frozen) and a fresh transformer (seeded)."""
    from diffusers import StableDiffusionPipeline

    from gendistill.shipped import resolve_model_name

    base = StableDiffusionPipeline.from_pretrained(resolve_model_name(config.base), safety_checker=None)
    text_encoder = clip_with_identity_projection(base.text_encoder)
    vae = base.vae
    vae.register_to_config(shift_factor=0.0)  # SD3's pipeline adds it back after unscaling; our latents are centred
    for module in (text_encoder, vae):
        module.requires_grad_(False).eval()
    if generator is not None:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    latent_size = base.unet.config.sample_size
    transformer = build_transformer(config.transformer, text_encoder.config.hidden_size,
                                    vae.config.latent_channels, latent_size)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.noise.shift)
    return FlowTeacherComponents(base.tokenizer, text_encoder, vae, transformer, scheduler)
