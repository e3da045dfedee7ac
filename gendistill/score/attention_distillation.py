"""Attention Distillation (Zhou et al., "Attention Distillation: A Unified Approach to Visual
Characteristics Transfer", CVPR 2025, arXiv 2502.20235; reference code: github.com/xugao97/AttentionDistillation).

The UNet's self-attention layers say what an image looks like. For each chosen layer ``l`` the image's own
attention output ``O_l = softmax(Q_l K_l^T / sqrt(d)) V_l`` (per head, before the output projection, as the
reference code compares them) is pulled toward the output it would have if it attended to the *reference's*
keys and values:

    L_AD = sum_l mean | O_l - sg[softmax(Q_l K_ref,l^T / sqrt(d)) V_ref,l] |

(the target uses the image's own queries, detached: the gradient flows through ``O_l`` only). A content image
keeps its layout through its queries: ``L_c = sum_l mean | Q_l - sg[Q_content,l] |``, and the loss is
``ad_weight L_AD + content_weight L_c``. Every image goes through the UNet *clean* (nothing is noised) with the
timestep label ``t`` and the empty prompt, without CFG; the chosen layers are the decoder's last self-attentions
(SD 1.5: the last 6, up blocks 2 and 3, the highest resolution; the shapes teacher: its last 2, up block 1 at
8x8 tokens, the only decoder self-attentions above the 4x4 ones).

Two uses, both here:

- ``AttentionDistillation`` (config ``AttentionDistillationConfig``): the loss as a ``ScoreGuidance`` on a latent
  scene, optimised on the one trainer (the paper's optimisation in latent space: Adam on the latent, one step per
  timestep as ``t`` sweeps the model's DDIM grid from high to low over the run's steps);
- ``AttentionGuide`` (config ``SamplerGuidanceConfig``): the paper's "improved classifier guidance" inside a
  sampler, see ``attention_guide.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendistill.backends.attention import AttentionAccess, AttentionRecord, attention_layers
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.denoiser import TextCondition
from gendistill.diffusion.losses import surrogate_loss
from gendistill.errors import UserError, check_range, key_path
from gendistill.recipe import Loss, Phase
from gendistill.score.base import GuidanceOutput, check_batch, no_phase
from gendistill.score.teacher import Teacher

Features = dict[str, AttentionRecord]
"""Per chosen layer: its queries, keys and values, (B, heads, tokens, head_dim)."""


@dataclass
class ADLossConfig:
    """The attention-distillation loss: which self-attention layers, and the weights of its two terms."""

    layers: int = 6
    """The decoder's last this many self-attention layers (SD 1.5: 6, up blocks 2 and 3)."""
    ad_weight: float = 1.0
    """Weight of the attention-distillation term L_AD (0: the content loss alone, the no-AD baseline)."""
    content_weight: float = 0.25
    """Weight of the content term L_c (queries against the content image's); unused without a content image."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "layers"), self.layers, 1)
        check_range(key_path(path, "ad_weight"), self.ad_weight, 0.0)
        check_range(key_path(path, "content_weight"), self.content_weight, 0.0)


def decoder_self_attentions(unet: nn.Module, count: int) -> list[str]:
    """The names of the UNet's last ``count`` self-attention layers in its up blocks (all if fewer)."""
    names = [n for n in attention_layers(unet, "self") if n.startswith("up_blocks.")]
    if not names:
        raise UserError("attention distillation needs a UNet with self-attention in its up blocks")
    return names[-count:]


def attention_output(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d)) v`` per head, (B, heads, tokens, head_dim)."""
    return F.scaled_dot_product_attention(query, key, value)


def ad_loss(own: Features, reference: Features) -> Tensor:
    """``L_AD``: per layer, the mean absolute difference between the image's own attention output and attention
    of its (detached) queries over the reference's keys and values; summed over layers."""
    total = 0.0
    for name, mine in own.items():
        ref = reference[name]
        target = attention_output(mine.query.detach(), _rows(ref.key, mine.query), _rows(ref.value, mine.query))
        total = total + (attention_output(mine.query, mine.key, mine.value) - target.detach()).abs().mean()
    return total


def content_loss(own: Features, content: Features) -> Tensor:
    """``L_c``: per layer, the mean absolute difference between the image's queries and the content's."""
    total = 0.0
    for name, mine in own.items():
        total = total + (mine.query - _rows(content[name].query, mine.query).detach()).abs().mean()
    return total


def _rows(t: Tensor, like: Tensor) -> Tensor:
    """A one-image feature broadcast to the batch of ``like``."""
    return t.expand(like.shape[0], *t.shape[1:]) if t.shape[0] == 1 and like.shape[0] != 1 else t


class StyleLoss:
    """The attention-distillation and content losses of latents against a reference's (and a content's) at a
    timestep: the features of every image come from one UNet pass each, clean, with the empty prompt."""

    def __init__(self, model: TextToImageModel, config: ADLossConfig):
        if model.family != "vp":
            raise UserError("attention distillation needs a UNet pipeline (Stable Diffusion 1.x/2.x/XL or the "
                            "shapes teacher), not a flow-matching transformer")
        self.teacher, self.config = Teacher(model), config
        self.network = model.network
        self.layers = decoder_self_attentions(self.network, config.layers)

    def features(self, latents: Tensor, t: float | Tensor, record: tuple[str, ...] = ("query", "key", "value")
                 ) -> Features:
        """The chosen layers' tensors for ``latents`` (pipeline latent units) at timestep label ``t``; attached
        to the graph of ``latents`` when grad is on."""
        with AttentionAccess(self.network, kinds=("self",), record=record, layers=self.layers) as access:
            unet_forward(self.network, latents, t, self.teacher.unconditional(latents.shape[0]))
        return dict(access.records)

    def references(self, reference: Tensor, content: Tensor | None, t: float | Tensor) -> tuple[Features,
                                                                                              Features | None]:
        """(reference features, content features or None), without gradient, in one batched pass."""
        with torch.no_grad():
            both = reference if content is None else torch.cat([reference, content])
            feats = self.features(both, t)
        if content is None:
            return feats, None
        n = reference.shape[0]
        split = [{k: AttentionRecord(query=r.query[i], key=r.key[i], value=r.value[i]) for k, r in feats.items()}
                 for i in (slice(0, n), slice(n, None))]
        return split[0], split[1]

    def loss(self, latents: Tensor, t: float | Tensor, reference: Features, content: Features | None
             ) -> tuple[Tensor, dict[str, float]]:
        """(``ad_weight L_AD + content_weight L_c``, its terms) for ``latents`` against precomputed features."""
        own = self.features(latents, t)
        ad = ad_loss(own, reference)
        total = self.config.ad_weight * ad
        terms = {"ad": float(ad.detach())}
        if content is not None:
            lc = content_loss(own, content)
            total = total + self.config.content_weight * lc
            terms["content"] = float(lc.detach())
        return total, terms


def unet_forward(network: nn.Module, latents: Tensor, t: float | Tensor, cond: TextCondition) -> Tensor:
    """The UNet's raw output for ``latents`` as they are (no input scaling) at timestep label ``t``."""
    t = torch.as_tensor(t, dtype=torch.float32, device=latents.device).reshape(-1).expand(latents.shape[0])
    kwargs = {"encoder_hidden_states": cond.embeds.to(latents.dtype)}
    if cond.pooled is not None:
        kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    return network(latents, t, **kwargs).sample


@dataclass
class AttentionDistillationConfig:
    """Attention Distillation's optimisation in latent space (arXiv 2502.20235): the AD and content losses at
    timestep labels that sweep the model's DDIM grid from high to low over the run's steps."""

    KIND: ClassVar[str] = "attention_distillation"

    loss: ADLossConfig = field(default_factory=ADLossConfig)
    """The loss: layers and term weights."""

    def check(self, path: str) -> None:
        self.loss.check(key_path(path, "loss"))

    def build(self, model: TextToImageModel, reference: Tensor, content: Tensor | None = None
              ) -> AttentionDistillation:
        """The guidance on ``model`` toward ``reference`` latents (1, C, h, w), keeping ``content``'s layout."""
        return AttentionDistillation(model, self, reference, content)


class AttentionDistillation:
    """``ad_weight L_AD + content_weight L_c`` as a ``ScoreGuidance``: its gradient on the scene's latents.

    Step ``k`` of ``n`` uses the ``k``-th timestep of the model's own ``n``-step DDIM grid (high to low); the
    reference's and content's features are recomputed at that timestep. Deterministic: ``generator`` is unused.
    The loss it returns is the surrogate of the gradient shifted to the true loss's value, so the trainer logs
    ``L`` itself while one backward pass through the UNet makes the gradient."""

    def __init__(self, model: TextToImageModel, config: AttentionDistillationConfig, reference: Tensor,
                 content: Tensor | None = None):
        self.style = StyleLoss(model, config.loss)
        self.model, self.config = model, config
        self.reference = reference.detach().float()
        self.content = None if content is None else content.detach().float()
        self.trace: list[dict[str, float]] = []
        """Per call: step, t and the loss terms (the job's curves read them)."""

    def timestep(self, step: int, total_steps: int) -> float:
        """The DDIM grid's timestep for ``step`` of ``total_steps``."""
        return float(self.model.vp_schedule().timesteps(max(1, total_steps))[min(step, total_steps - 1)])

    def gradient(self, images: Tensor, prompts: Sequence[str], step: int, total_steps: int,
                 generator: torch.Generator, camera_features: Tensor | None = None) -> GuidanceOutput:
        check_batch(images, prompts)
        latents = self.style.teacher.encode(images)
        t = self.timestep(step, total_steps)
        reference, content = self.style.references(self.reference.to(latents), self._content(latents), t)
        leaf = latents.detach().requires_grad_(True)
        with torch.enable_grad():
            total, terms = self.style.loss(leaf, t, reference, content)
            (grad,) = torch.autograd.grad(total, leaf)
        surrogate = surrogate_loss(latents, grad)
        loss = surrogate - surrogate.detach() + total.detach()
        fraction = t / self.model.num_train_timesteps
        terms = {**terms, "t": fraction, "grad_norm": grad.flatten(1).norm(dim=1).mean().item(),
                 "surrogate": float(total.detach())}
        self.trace.append({"step": step, **terms})
        sigma = self.model.train_sigmas[int(t)].to(latents).expand(latents.shape[0])
        return GuidanceOutput(grad, loss, terms, sigma, latents)

    def _content(self, like: Tensor) -> Tensor | None:
        return None if self.content is None else self.content.to(like)

    def extra_phases(self) -> list[Phase]:
        """None: the loss has nothing to train."""
        return []

    def phase_loss(self, name: str, images: Tensor, prompts: Sequence[str], camera_features: Tensor | None,
                   generator: torch.Generator) -> Loss:
        raise no_phase(AttentionDistillationConfig.KIND, name)

    def modules(self) -> dict[str, nn.Module]:
        return {}
