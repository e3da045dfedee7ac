"""Score distillation that edits an image: plain SDS, DDS and LUSD as choices of one guidance.

- ``sds`` (DreamFusion): ``eps_cfg(z_t; target) - eps``.
- ``dds`` (Delta Denoising Score, Hertz et al. 2023): ``eps_cfg(z_t; target) - eps_cfg(zsrc_t; source)``, the
  source image noised with the same timestep and noise, so the terms both branches share cancel.
- ``difference`` (LUSD's own term, arXiv 2503.11054, reference code sincostanx/LUSD ``get_csd_loss`` with
  ``guidance_scale=-1``): ``eps(z_t; target) - eps(z_t; source)``, the two prompts on the *same* noised edit.

LUSD adds, each a switch here so that every combination can be measured:
- a spatial mask from the target word's cross-attention spread by self-attention (``edit_mask.py``), on the
  score term only, smoothed by an EMA and applied progressively;
- gradient filtering: redraw the timestep and noise until the score term's standard deviation reaches a
  threshold that decays by ``filter_decay`` per redraw (an uninformative draw is not spent on the edit);
- gradient normalisation: the direction ``(1 - reg) M * score + reg (z - z_src)`` rescaled to standard deviation
  ``direction_scale(step)``, a sigmoid fall from ``scale_high`` to ``scale_low``.
The edit's latents are the scene (``render/scenes/latents.py``); with LUSD's SGD at rate 2000/4096 the update is
the reference's (its surrogate sums over a 64x64 latent and is multiplied by 2000).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn

from gendistill.backends.attention import AttentionAccess, layers_at, nearest_downsample
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.timesteps import TimestepRange
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import WEIGHTINGS, GuidanceOutput, Weighting, check_batch, no_phase, weighted
from gendistill.score.edit_mask import (direction_scale, edited_word, normalised_mask, progressive,
                                        spread_by_self_attention, token_map, token_positions)
from gendistill.score.teacher import Noised, Teacher

BASES = ("sds", "dds", "difference")
TARGET_BLOCK = 1
"""Every score term calls the denoiser with the target prompt on the edit as its second block of rows."""


@dataclass
class EditMaskConfig:
    """LUSD's attention mask: which resolutions its maps come from, and how it evolves."""

    enabled: bool = True
    """Mask the score term (false: the whole image may change)."""
    word: str = "auto"
    """The target prompt's word whose attention makes the mask; auto: the edited word (``edit_mask.edited_word``)."""
    cross_downsample: int = 4
    """Cross-attention maps from the layers this many times smaller than the latent (SD 1.5: 16x16 of 64); a
    model without attention there uses its nearest resolution."""
    self_downsample: int = 2
    """Self-attention maps from the layers this many times smaller than the latent (SD 1.5: 32x32 of 64), or the
    nearest the model has."""
    self_power: int = 1
    """Spread the cross-attention map by this power of the self-attention matrix (LUSD: 1; 0: no spreading)."""
    momentum: float = 0.1
    """EMA weight of each step's new map (LUSD: 0.1)."""
    progressive: bool = True
    """Blend the mask in over the run (``beta * M + 1 - beta``, beta 0 -> 1); false: the mask from the start."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "cross_downsample"), self.cross_downsample, 1)
        check_range(key_path(path, "self_downsample"), self.self_downsample, 1)
        check_range(key_path(path, "momentum"), self.momentum, 0.0, 1.0)
        check_range(key_path(path, "self_power"), self.self_power, 0)


@dataclass
class EditScoreConfig:
    """An editing guidance: the score term (``base``), and LUSD's mask, filter and normalisation."""

    KIND: ClassVar[str] = "edit"

    base: Literal["sds", "dds", "difference"] = "difference"
    """The score term: sds, dds or difference (LUSD's: target minus source prompt on the same noised edit)."""
    guidance_scale: float = 7.5
    """CFG scale of the sds and dds terms (the difference term has none)."""
    weighting: Weighting = "uniform"
    """w(t) on the score term: uniform (LUSD, DDS), sds (1 - abar_t) or snr."""
    timesteps: TimestepRange = field(default_factory=lambda: TimestepRange(0.05, 0.95))
    """Timesteps drawn per step, as fractions of T (LUSD: 50 to 949 of 1000)."""
    mask: EditMaskConfig = field(default_factory=EditMaskConfig)
    """The attention mask."""
    filter_threshold: float = 0.01
    """Redraw t and noise until std(score) reaches this (decaying per redraw); 0: no filtering."""
    filter_decay: float = 0.99
    """The threshold's factor per redraw."""
    max_draws: int = 50
    """At most this many draws per step (the last is taken)."""
    normalise: bool = True
    """Rescale the direction to std ``direction_scale(step)`` (false: the weighted score as it is)."""
    scale_high: float = 0.15
    """The normalised step's size at the start."""
    scale_low: float = 0.01
    """... and at the end."""
    scale_speed: float = 5.0
    """Steepness of the fall (the sigmoid's argument runs from -speed to +speed)."""
    reg_scale: float = 0.02
    """Weight of the pull back to the source latents, ``reg (z - z_src)``, against ``(1 - reg)`` on the score."""

    def check(self, path: str) -> None:
        check_choice(key_path(path, "base"), self.base, BASES)
        check_choice(key_path(path, "weighting"), self.weighting, WEIGHTINGS)
        check_range(key_path(path, "filter_threshold"), self.filter_threshold, 0.0)
        check_range(key_path(path, "filter_decay"), self.filter_decay, 0.0, 1.0)
        check_range(key_path(path, "max_draws"), self.max_draws, 1)
        check_range(key_path(path, "reg_scale"), self.reg_scale, 0.0, 1.0)
        check_range(key_path(path, "scale_low"), self.scale_low, 0.0)
        check_range(key_path(path, "scale_high"), self.scale_high, self.scale_low)

    def build(self, model: TextToImageModel, source_latents: Tensor, source_prompt: str) -> EditScore:
        """The guidance editing ``source_latents`` (1, C, h, w), an image described by ``source_prompt``."""
        return EditScore(model, self, source_latents, source_prompt)


class MaskState(nn.Module):
    """The mask's EMA as a buffer, so a checkpoint holds it and a resumed run continues it."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | None = None):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool, device=device))

    def update(self, new: Tensor, momentum: float) -> Tensor:
        self.mask.copy_(new if not bool(self.seen) else (1 - momentum) * self.mask + momentum * new)
        self.seen.fill_(True)
        return self.mask


@dataclass
class _Draw:
    noised: Noised
    score: Tensor
    """The score term, epsilon units, (B, C, h, w)."""
    records: dict


class EditScore:
    """The editing guidance (see the module docstring). ``prompts`` are the target prompt per image."""

    def __init__(self, model: TextToImageModel, config: EditScoreConfig, source_latents: Tensor, source_prompt: str):
        check_config(config, config.KIND)
        self.teacher, self.config = Teacher(model), config
        self.source_latents, self.source_prompt = source_latents.detach().float(), source_prompt
        self.state = MaskState(tuple(source_latents.shape[-2:]), source_latents.device)
        self._layers = self._mask_layers() if config.mask.enabled else ([], [])

    # --- the score terms ---------------------------------------------------------------------------------
    def _score(self, z: Tensor, noised: Noised, target: TextCondition, n: int) -> Tensor:
        c, t = self.config, self.teacher
        x, sigma, denoise = noised.x, noised.sigma, t.denoiser()
        if c.base == "difference":
            source = t.negative(self.source_prompt, n)
            x0_src, x0_tgt = t.branches(x, sigma, [source, target])
            return (x0_src - x0_tgt) / expand_sigma(sigma, x)
        uncond = t.unconditional(n)
        if c.base == "sds":
            x0_u, x0_c = t.branches(x, sigma, [uncond, target])
            return self._eps(x, sigma, x0_u, x0_c) - noised.noise
        src_x = self.source_latents.expand_as(z) + expand_sigma(sigma, z) * noised.noise
        with torch.no_grad():
            out = denoise(torch.cat([x, x, src_x, src_x]), torch.cat([sigma] * 4),
                          TextCondition.concat([uncond, target, uncond, t.negative(self.source_prompt, n)]))
        x0_u, x0_c, s0_u, s0_c = out.chunk(4)
        return self._eps(x, sigma, x0_u, x0_c) - self._eps(src_x, sigma, s0_u, s0_c)

    def _eps(self, x: Tensor, sigma: Tensor, x0_u: Tensor, x0_c: Tensor) -> Tensor:
        x0 = x0_u + self.config.guidance_scale * (x0_c - x0_u)
        return (x - x0) / expand_sigma(sigma, x)

    # --- the mask ---------------------------------------------------------------------------------------------
    def mask_word(self, target_prompt: str) -> str:
        word = self.config.mask.word
        return edited_word(self.source_prompt, target_prompt) if word == "auto" else word

    def _mask_layers(self) -> tuple[list[str], list[str]]:
        """The cross- and self-attention layers the mask reads: those at the configured resolutions, or the
        nearest ones the model has."""
        m, unet = self.config.mask, self.teacher.model.network
        try:
            cross = layers_at(unet, "cross", nearest_downsample(unet, "cross", m.cross_downsample))
            selfs = layers_at(unet, "self", nearest_downsample(unet, "self", m.self_downsample))
        except ValueError as err:
            raise UserError(f"{err}: LUSD's mask needs attention (set method.mask.enabled=false)") from None
        return cross, selfs

    def _access(self) -> AttentionAccess | None:
        if not self.config.mask.enabled:
            return None
        cross, selfs = self._layers
        return AttentionAccess(self.teacher.model.network, kinds=("self", "cross"), record=("probs",),
                               layers=cross + selfs)

    def _new_mask(self, records: dict, target_prompt: str, n: int) -> Tensor:
        row = slice(TARGET_BLOCK * n, (TARGET_BLOCK + 1) * n)
        try:
            positions = token_positions(self.teacher.model.pipe.tokenizer, target_prompt, self.mask_word(target_prompt))
        except ValueError as err:
            raise UserError(f"{err}; set method.mask.word to a word of the target prompt") from None
        cross_layers, self_layers = self._layers
        cross = [records[k].probs[row] for k in cross_layers]
        selfs = [records[k].probs[row] for k in self_layers]
        spread = spread_by_self_attention(token_map(cross, positions), selfs, self.config.mask.self_power)
        return normalised_mask(spread, tuple(self.state.mask.shape))[0, 0]

    def current_mask(self) -> Tensor:
        """The mask's EMA now, (h, w) in [0, 1] (ones before the first step)."""
        return self.state.mask.detach().clone()

    # --- the protocol ---------------------------------------------------------------------------------------
    def _draw(self, z: Tensor, prompts: Sequence[str], step: int, total_steps: int,
              generator: torch.Generator) -> tuple[_Draw, int]:
        c, n = self.config, len(prompts)
        target = self.teacher.conditions(prompts)
        threshold, draws = c.filter_threshold, 0
        while True:
            draws += 1
            noised = self.teacher.noised(z, c.timesteps, step, total_steps, generator)
            access = self._access()
            if access is None:
                score, records = self._score(z, noised, target, n), {}
            else:
                with access:
                    score = self._score(z, noised, target, n)
                records = dict(access.records)
            if threshold <= 0 or score.std() >= threshold or draws >= c.max_draws:
                return _Draw(noised, score, records), draws
            threshold *= c.filter_decay

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        c = self.config
        check_batch(images, prompts)
        z = self.teacher.encode(images)
        draw, draws = self._draw(z, prompts, step, total_steps, generator)
        score = weighted(draw.score, draw.noised.sigma, c.weighting)
        terms = {"draws": float(draws), "score_std": draw.score.std().item()}
        if c.mask.enabled:
            mask = self.state.update(self._new_mask(draw.records, prompts[0], len(prompts)), c.mask.momentum)
            if c.mask.progressive:
                mask = progressive(mask, step, total_steps)
            score = score * mask.to(score)
            terms["mask_mean"] = mask.mean().item()
        direction = (1 - c.reg_scale) * score + c.reg_scale * (z.detach() - self.source_latents.to(z))
        if c.normalise:
            size = direction_scale(step, total_steps, c.scale_high, c.scale_low, c.scale_speed)
            direction = direction / direction.std().clamp_min(1e-12) * size
        return self.teacher.output(z, direction, draw.noised, terms)

    def extra_phases(self) -> list[Phase]:
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase("edit", name)

    def modules(self) -> dict[str, nn.Module]:
        """The mask's EMA (a checkpoint holds it)."""
        return {"mask": self.state}
