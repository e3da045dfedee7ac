"""A loaded diffusers text-to-image pipeline seen through the canonical interface.

``TextToImageModel`` gives the denoiser, the schedules a sampler needs, prompt encoding (through the
pipeline's own ``encode_prompt``, so embeddings equal the stock pipeline's) and VAE decoding. Families:
"vp" (UNet pipelines: SD 1.x/2.x, SDXL) and "flow" (SD3-style transformers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor, nn

from gendistill.backends.sampling_route import named_follower
from gendistill.backends.student_card import StudentCard
from gendistill.diffusion.adapters import (FlowDenoiser, LCMBoundaryDenoiser, VPDenoiser, guidance_embedding,
                                           network_dtype)
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.schedules import (DiscreteVPSchedule, FlowMatchSchedule, KarrasSchedule, LCMSchedule,
                                            flow_time_to_sigma, vp_sigmas_from_alphas_cumprod)
from gendistill.diffusion.subinterval import SigmaSwitchDenoiser
from gendistill.errors import UserError


GuidanceKind = Literal["cfg", "embedded", "distilled"]
"""How one guided prediction of a model is made: classifier-free guidance (two network passes), the scale
embedded in a w-embedding UNet (one pass), or guidance distilled into the weights (the conditional pass alone)."""
GUIDANCE_PASSES: dict[str, int] = {"cfg": 2, "embedded": 1, "distilled": 1}
"""Network passes per guided prediction (at a scale above 1) of each ``GuidanceKind``."""

Boundary = Union[Literal["pipeline"], float, None]
"""LCM's boundary condition on a denoiser: as the pipeline's scheduler does, never (None), or always with
this timestep scaling."""


@dataclass(frozen=True)
class SamplingPlan:
    """Sigmas for a sampler plus how to scale the starting noise and the final state."""

    sigmas: Tensor
    noise_scaling: str  # "vp" | "ve" | "flow", see samplers.initial_scale

    @property
    def final_latent_scale(self) -> float:
        """Canonical x at the final sigma back to the pipeline's latent space."""
        last = float(self.sigmas[-1])
        if self.noise_scaling == "flow":
            return 1 / (1 + last)
        return (1 + last**2) ** -0.5


class TextToImageModel:
    """Wraps a diffusers pipeline with a ``unet`` (VP) or an SD3-style ``transformer`` (flow)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.config = dict(pipe.scheduler.config)
        self.interval_embedder = getattr(pipe, "interval_embedder", None)
        """A MeanFlow student's (``backends/meanflow_pipeline.py``): its network then predicts average velocities
        and ``generation`` samples it by its flow map; None for every other pipeline."""
        self.negative_token = (getattr(pipe, "config", None) or {}).get("negative_token")
        """A multi-CFG student's marker token (``backends/multi_cfg_pipeline.py``): its condition is the prompt's
        encoding followed by that of ``"<neg> " + negative``, and its UNet embeds both guidance scales; else None."""
        self.card = StudentCard.read(pipe.name_or_path) if getattr(pipe, "name_or_path", None) else None
        """The folder's ``gendistill.json`` (None for a hub id or a folder without one); a LoRA student's own card
        when ``backends.score_model`` fused it into its base."""
        self.cfg_on_distilled = False
        """Apply classifier-free guidance even to a guidance-distilled student (``guidance_kind`` "cfg")."""
        if getattr(pipe, "unet", None) is not None:
            self.family = "vp"
            self.alphas_cumprod = _alphas_cumprod(self.config)
            self.network = pipe.unet
            self.experts, self.switch_sigmas = _phased_experts(pipe, self.train_sigmas)
        elif getattr(pipe, "transformer", None) is not None and "shift" in self.config:
            self.family = "flow"
            self.network = pipe.transformer
        else:
            raise UserError(f"{type(pipe).__name__} is not supported: need a UNet text-to-image pipeline "
                            "(StableDiffusion, StableDiffusionXL) or an SD3-style flow-matching one")

    # --- denoiser -----------------------------------------------------------------------------------

    @property
    def scheduler_name(self) -> str:
        return type(self.pipe.scheduler).__name__

    @property
    def embeds_guidance(self) -> bool:
        """True for UNets with the guidance scale distilled in (LCM's w-embedding): no CFG batch needed."""
        return self.family == "vp" and _embedding_width(self.network) is not None

    @property
    def guidance_kind(self) -> GuidanceKind:
        """How a guided prediction is made: "embedded" for a w-embedding UNet (LCM, multi-CFG), "distilled" for a
        student whose card samples at guidance 0 (DMD2, progressive, Phased DMD, BOOT, MeanFlow, LCM-LoRA: their
        guidance is in the weights) unless ``cfg_on_distilled``, else "cfg"."""
        if self.embeds_guidance:
            return "embedded"
        card = self.card
        distilled = card is not None and card.is_student and card.guidance == 0
        return "distilled" if distilled and not self.cfg_on_distilled else "cfg"

    def default_sampler(self) -> str:
        """The named gendistill sampler closest to the pipeline's own scheduler (``--sampler auto`` runs the
        scheduler itself, see ``backends.sampling_route``)."""
        return named_follower(self.scheduler_name)

    @property
    def patch_size(self) -> int:
        """Latent pixels per token side (SD3 transformers patchify; UNets: 1)."""
        return int(getattr(self.network.config, "patch_size", 1) or 1) if self.family == "flow" else 1

    def denoiser(self, guidance: float | Tensor = 1.0, num_images: int = 1, network: nn.Module | None = None,
                 boundary: Boundary = "pipeline", negative_guidance: float | Tensor | None = None) -> nn.Module:
        """THE canonical denoiser of any network of this model: the teacher's own (``network=None``) or a
        student, fake score or LoRA copy, all on this model's schedule and prediction type.

        ``guidance`` is embedded (a float for ``num_images`` rows, or one scale per row) when the network has a
        w-embedding (LCM's ``time_cond_proj_dim``); others ignore it. ``negative_guidance`` (not None) embeds the
        two scales of a multi-CFG student instead. ``boundary`` is LCM's boundary
        condition: "pipeline" applies it as the model's scheduler does (LCMScheduler: yes, with its
        ``timestep_scaling``), None never, a float always with that timestep scaling (a consistency student)."""
        if network is None and len(getattr(self, "experts", ())) > 1:  # a Phased DMD student: experts by sigma
            experts = [self.denoiser(guidance, num_images, e, boundary, negative_guidance) for e in self.experts]
            return SigmaSwitchDenoiser(experts, self.switch_sigmas)
        network = self.network if network is None else network
        if self.family == "flow":
            return FlowDenoiser(network, self.config.get("num_train_timesteps", 1000))
        denoiser = VPDenoiser(network, self.alphas_cumprod, self.prediction_type,
                              _guidance_condition(network, guidance, num_images, negative_guidance))
        if boundary == "pipeline":
            boundary = self.config.get("timestep_scaling", 10.0) if self.scheduler_name == "LCMScheduler" else None
        return denoiser if boundary is None else LCMBoundaryDenoiser(denoiser, float(boundary))

    @property
    def prediction_type(self) -> str:
        """What the VP network predicts: "epsilon", "v_prediction" or "sample" (the scheduler's setting)."""
        return self.config.get("prediction_type", "epsilon")

    # --- schedules ----------------------------------------------------------------------------------

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod) if self.family == "vp" else int(self.config.get("num_train_timesteps", 1000))

    @property
    def train_sigmas(self) -> Tensor:
        """Sigma of each training timestep, (T,), float64: VP ``sqrt((1 - abar) / abar)``; flow models use flow
        times ``t = k / T``, k = 1..T, as ``sigma = t / (1 - t)`` (capped)."""
        if self.family == "vp":
            return vp_sigmas_from_alphas_cumprod(self.alphas_cumprod)
        T = self.num_train_timesteps
        return flow_time_to_sigma(torch.arange(1, T + 1, dtype=torch.float64) / T)

    def plan(self, sampler: str, steps: int, karras: bool = False) -> SamplingPlan:
        """The sigmas diffusers' own scheduler would visit for this sampler and step count."""
        if self.family == "flow":
            return SamplingPlan(FlowMatchSchedule(self.config.get("shift", 1.0),
                                                  self.config.get("num_train_timesteps", 1000)).sigmas(steps), "flow")
        if sampler == "consistency" and self.scheduler_name == "LCMScheduler":
            lcm = LCMSchedule(self.alphas_cumprod, self.config.get("original_inference_steps", 50))
            return SamplingPlan(lcm.sigmas(steps), "vp")
        schedule = self.vp_schedule(final_sigma=self._ddim_final_sigma() if sampler == "ddim" else 0.0)
        sigmas = schedule.sigmas(steps)
        if karras:  # between the largest and the smallest *spaced* sigma, as diffusers' use_karras_sigmas
            sigmas = KarrasSchedule(float(sigmas[-2] if steps > 1 else sigmas[0]), float(sigmas[0])).sigmas(steps)
        euler_like = sampler != "ddim" and sampler != "consistency"
        ve_start = euler_like and schedule.spacing in ("linspace", "trailing")
        return SamplingPlan(sigmas, "ve" if ve_start else "vp")

    def vp_schedule(self, final_sigma: float = 0.0) -> DiscreteVPSchedule:
        return DiscreteVPSchedule(self.alphas_cumprod, self.config.get("timestep_spacing", "leading"),
                                  self.config.get("steps_offset", 0), final_sigma)

    def _ddim_final_sigma(self) -> float:
        """DDIM's last step lands on alpha-bar 1 (sigma 0) or, without ``set_alpha_to_one``, on timestep 0."""
        if self.config.get("set_alpha_to_one", True):
            return 0.0
        abar0 = float(self.alphas_cumprod[0])
        return ((1 - abar0) / abar0) ** 0.5

    # --- text and latents ---------------------------------------------------------------------------

    def encode(self, prompt: str, negative_prompt: str | None, num_images: int) -> tuple[TextCondition, TextCondition]:
        """(conditional, unconditional) conditions, each repeated ``num_images`` times."""
        device = self.network.device
        if self.family == "flow":
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt, None, None, device=device, num_images_per_prompt=num_images,
                do_classifier_free_guidance=True, negative_prompt=negative_prompt)
            return TextCondition(pos, pooled), TextCondition(neg, neg_pooled)
        if getattr(self.pipe, "text_encoder_2", None) is not None:
            return self._encode_sdxl(prompt, negative_prompt, num_images, device)
        if self.negative_token is not None:  # one condition: the student applies the negative itself
            cond = self.encode_multi_cfg([prompt], [negative_prompt or ""]).repeat(num_images)
            return cond, cond
        pos, neg = self.pipe.encode_prompt(prompt, device, num_images, True, negative_prompt)
        return TextCondition(pos), TextCondition(neg)

    def encode_batch(self, prompts: list[str]) -> tuple[TextCondition, TextCondition]:
        """(conditional, empty-prompt) conditions for a batch of different prompts, one row each (a multi-CFG
        student: its condition with the empty negative, twice)."""
        if self.negative_token is not None:
            cond = self.encode_multi_cfg(prompts, [""] * len(prompts))
            return cond, cond
        if self.family == "vp" and getattr(self.pipe, "text_encoder_2", None) is None:
            pos, neg = self.pipe.encode_prompt(prompts, self.network.device, 1, True, None)
            return TextCondition(pos), TextCondition(neg)
        if self.family == "flow":
            return self._encode_flow_batch(prompts)
        conds = [self.encode(p, None, 1) for p in prompts]
        return TextCondition.concat([c for c, _ in conds]), TextCondition.concat([u for _, u in conds])

    @torch.no_grad()
    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images in [0, 1] to pipeline latents (a sample of the VAE posterior, times the scaling factor)."""
        vae = self.pipe.vae
        dist = vae.encode((images * 2 - 1).to(device=vae.device, dtype=vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator, device=dist.mean.device, dtype=dist.mean.dtype)
        latents = dist.mean + dist.std * noise
        if getattr(vae.config, "shift_factor", None) is not None and self.family == "flow":
            latents = latents - vae.config.shift_factor
        return latents * vae.config.scaling_factor

    def _encode_flow_batch(self, prompts: list[str]) -> tuple[TextCondition, TextCondition]:
        """Each distinct prompt, and the empty one, encoded once and alone: SD3's two CLIP passes per prompt and
        per guidance branch were 40% of a 1-step image, and a prompt encoded alone has the same bits in any batch
        (a resumed run's batches must equal an uninterrupted run's)."""
        def alone(prompt: str) -> TextCondition:
            pos, _, pooled, _ = self.pipe.encode_prompt(prompt, None, None, device=self.network.device,
                                                        num_images_per_prompt=1, do_classifier_free_guidance=False)
            return TextCondition(pos, pooled)

        rows = {prompt: alone(prompt) for prompt in dict.fromkeys(prompts)}
        empty = rows[""] if "" in rows else alone("")
        return TextCondition.concat([rows[p] for p in prompts]), empty.repeat(len(prompts))

    def encode_multi_cfg(self, prompts: list[str], negatives: list[str]) -> TextCondition:
        """A multi-CFG student's condition: the prompts' encodings followed by those of ``"<neg> " + negative``."""
        from gendistill.backends.multi_cfg_pipeline import negative_text

        device = self.network.device
        pos, _ = self.pipe.encode_prompt(prompts, device, 1, False)
        neg, _ = self.pipe.encode_prompt([negative_text(n, self.negative_token) for n in negatives], device, 1, False)
        return TextCondition(torch.cat([pos, neg], dim=1))

    def _encode_sdxl(self, prompt, negative_prompt, num_images, device):
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=num_images, do_classifier_free_guidance=True,
            negative_prompt=negative_prompt)
        h, w = self.image_size()
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=pos.dtype, device=device).repeat(num_images, 1)
        return TextCondition(pos, pooled, time_ids), TextCondition(neg, neg_pooled, time_ids)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)

    def image_size(self) -> tuple[int, int]:
        size = self.network.config.sample_size * self.vae_scale_factor
        return size, size

    def latent_shape(self, num_images: int) -> tuple[int, ...]:
        h, w = self.image_size()
        channels = self.network.config.in_channels
        return (num_images, channels, h // self.vae_scale_factor, w // self.vae_scale_factor)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Pipeline latents to images in [0, 1], (B, 3, H, W)."""
        return self.decode_with_grad(latents)

    def decode_with_grad(self, latents: Tensor) -> Tensor:
        """``decode`` keeping the autograd graph (reward fine-tuning back-propagates through the VAE)."""
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None) is not None and self.family == "flow":
            latents = latents + vae.config.shift_factor
        images = vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)



def _embedding_width(network: nn.Module) -> int | None:
    """The width of a UNet's w-embedding (``time_cond_proj_dim``), None without one (or without a config)."""
    return getattr(getattr(network, "config", None), "time_cond_proj_dim", None)


def _guidance_condition(network: nn.Module, guidance: float | Tensor, num_images: int,
                        negative_guidance: float | Tensor | None = None) -> Tensor | None:
    """The ``timestep_cond`` embedding ``guidance`` for a w-embedding network, (B, D) in its dtype; else None.
    With ``negative_guidance`` (a multi-CFG student): the two-scale embedding [emb(w_c - 1), emb(w_n)]."""
    dim = _embedding_width(network)
    if dim is None:
        return None

    def per_row(value: float | Tensor) -> Tensor:
        return value.detach().float().cpu() if isinstance(value, Tensor) else torch.full((num_images,), value)

    if negative_guidance is None:
        embedding = guidance_embedding(per_row(guidance), dim)
    else:
        from gendistill.backends.multi_cfg_pipeline import two_scale_embedding

        embedding = two_scale_embedding(per_row(guidance), per_row(negative_guidance), dim)
    return embedding.to(device=network.device, dtype=network_dtype(network))


def _phased_experts(pipe, train_sigmas: Tensor) -> tuple[list[nn.Module], list[float]]:
    """A phased pipeline's expert UNets and the sigmas below which each later one takes over (at the pipeline's
    own switch point between timesteps, so both samplers switch on the same steps); ``([unet], [])`` else."""
    from gendistill.backends.phased_pipeline import SWITCH_MARGIN, experts_of
    from gendistill.backends.scheduler_driver import TimestepUnits

    switches = (getattr(pipe, "config", None) or {}).get("switch_timesteps")
    if not switches:
        return [pipe.unet], []
    units = TimestepUnits("vp", train_sigmas)
    return experts_of(pipe), [units.sigma(t + SWITCH_MARGIN) for t in switches]


def _alphas_cumprod(config: dict) -> Tensor:
    """The training alpha-bar of a VP scheduler config (any beta schedule, zero-SNR rescale included)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    return DDPMScheduler(**{k: config[k] for k in keys if k in config}).alphas_cumprod.clone()
