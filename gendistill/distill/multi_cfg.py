"""Mixed-supervised multi-CFG distillation: a prompt's guidance and a negative prompt's guidance in ONE pass.

Paper: Zhou et al. 2024, "FADA: Fast Diffusion Avatar Synthesis with Mixed-Supervised Multi-CFG Distillation"
(arXiv 2412.16915): several classifier-free-guidance terms folded into one pass of a student that receives the
guidance scales through learnable tokens, trained on the teacher's guided outputs plus ground-truth data.

The teacher's guidance with three conditions (prompt c, negative prompt n, unconditional u), in x0 units (affine,
so equal to eps units), is one batched call of 3B rows:

    x0_guided = x0_u + w_c (x0_c - x0_u) - w_n (x0_n - x0_u)

The student is the teacher's UNet plus diffusers' w-embedding (``time_cond_proj_dim`` = 2 d, ``cond_proj``
zero-initialised: ``consistency.guidance_student``) fed ``timestep_cond`` = [emb(w_c - 1), emb(w_n)]; its
cross-attention reads the prompt's encoding followed by that of ``"<neg> " + negative``, ``<neg>`` a token added
to the tokenizer whose text-encoder row is the only trained part of the text encoder (``<neg>`` and the UNet's
``cond_proj`` are FADA's learnable scale/negative tokens, held by stock components). On noised real latents
``x = x0 + sigma eps`` the loss is

    teacher_weight * ||D_student(x) - stopgrad(x0_guided(x))||^2 + data_weight * ||D_student(x) - x0||^2

with a per-sigma weighting (``diffusion.losses.loss_weights``). Negatives are another caption of the batch (row
i + 1), or drawn from ``negative_prompts``; a share ``empty_negative_prob`` is empty (then w_n acts on the empty
prompt). The export is a diffusers folder of stock components plus ``pipeline.py``
(``backends/multi_cfg_pipeline.py``), one UNet call per step at any (w_c, w_n).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gendistill.backends.multi_cfg_pipeline import NEGATIVE_TOKEN, MultiCFGPipeline, negative_text
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config
from gendistill.diffusion.denoiser import TextCondition, expand_sigma
from gendistill.diffusion.losses import loss_weights, weighted_mse
from gendistill.distill.consistency import guidance_student
from gendistill.distill.export import StudentSampling
from gendistill.distill.models import DistillBatch, TeacherStudent, draw_sigma_and_noise
from gendistill.distill.recipes import BoundRecipe
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.recipe import Loss, ParamGroup, Phase, Update

SCALE_EMBEDDING_WIDTH = 256
"""Width d of each scale's sinusoidal embedding (LCM's w-embedding width); ``time_cond_proj_dim`` is 2 d."""


@dataclass
class MultiCFGConfig:
    """FADA's mixed-supervised multi-CFG distillation: prompt and negative-prompt guidance in one student pass."""

    KIND: ClassVar[str] = "multi_cfg"

    cond_scale_range: list[float] = field(default_factory=lambda: [1.0, 4.0])
    """[low, high] of the prompt guidance scale w_c drawn per row (diffusers' convention, 1: none)."""
    negative_scale_range: list[float] = field(default_factory=lambda: [0.0, 2.0])
    """[low, high] of the negative guidance scale w_n drawn per row (0: none)."""
    zero_negative_scale_prob: float = 0.25
    """Share of rows with w_n = 0 exactly: the student learns to ignore a negative it is not asked to use."""
    negative_prompts: list[str] | None = None
    """Negative prompts drawn per row; None: row i's negative is the batch's caption of row i + 1."""
    empty_negative_prob: float = 0.25
    """Share of rows with the empty negative prompt (w_n then pushes away from the unconditional)."""
    teacher_weight: float = 1.0
    """Weight of the distillation term ||D_student - x0_guided||^2."""
    data_weight: float = 0.1
    """Weight of the ground-truth term ||D_student - x0||^2 (FADA's mixed supervision; 0: teacher only)."""
    weighting: Literal["x0", "eps", "v", "min_snr"] = "v"
    """Per-sigma weighting of both terms in x0 units (see ``diffusion.losses.loss_weights``)."""
    snr_gamma: float = 5.0
    """Min-SNR's gamma (weighting min_snr)."""
    token_lr: float | None = 1e-3
    """Learning rate of the ``<neg>`` token's embedding row (None: the student phase's rate)."""
    guidance_scale: float = 2.0
    """The student's default prompt scale (its table and the pipeline's default; w_n 0, empty negative)."""
    sample_steps: int = 25
    """Steps of the table's headline row (the student samples with the teacher's scheduler)."""

    def check(self, path: str) -> None:
        """UserErrors naming the key for out-of-range settings."""
        for name in ("cond_scale_range", "negative_scale_range"):
            pair = getattr(self, name)
            if len(pair) != 2 or pair[0] > pair[1]:
                raise UserError(f"{key_path(path, name)} must be [low, high] with low <= high, got {pair}")
            check_range(f"{key_path(path, name)}[0]", pair[0], 0)
        if self.negative_prompts is not None and not self.negative_prompts:
            raise UserError(f"{key_path(path, 'negative_prompts')} is empty; give prompts or null (other captions)")
        check_range(key_path(path, "empty_negative_prob"), self.empty_negative_prob, 0.0, 1.0)
        check_range(key_path(path, "zero_negative_scale_prob"), self.zero_negative_scale_prob, 0.0, 1.0)
        check_range(key_path(path, "teacher_weight"), self.teacher_weight, 0)
        check_range(key_path(path, "data_weight"), self.data_weight, 0)
        if self.teacher_weight + self.data_weight <= 0:
            raise UserError(f"{key_path(path, 'teacher_weight')} + {key_path(path, 'data_weight')} must be > 0")
        check_choice(key_path(path, "weighting"), self.weighting, ("x0", "eps", "v", "min_snr"))
        check_range(key_path(path, "snr_gamma"), self.snr_gamma, 0)
        if self.token_lr is not None:
            check_range(key_path(path, "token_lr"), self.token_lr, 0)
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0)
        check_range(key_path(path, "sample_steps"), self.sample_steps, 1)

    def build(self, model: TextToImageModel, first_batch: Callable[[], DistillBatch] | None = None) -> BoundRecipe:
        """The recipe on ``model``; the student exports as a ``MultiCFGPipeline`` with the teacher's scheduler."""
        recipe = MultiCFGRecipe(model, self)
        return BoundRecipe(recipe, recipe.student, StudentSampling("ddim"), model.num_train_timesteps,
                           self.sample_steps, self.guidance_scale, pipeline_builder=recipe.pipeline)


def multi_cfg_target(x0_cond: Tensor, x0_negative: Tensor, x0_uncond: Tensor, cond_scale: Tensor,
                     negative_scale: Tensor) -> Tensor:
    """``x0_u + w_c (x0_c - x0_u) - w_n (x0_n - x0_u)``, scales per row (B,)."""
    w_c, w_n = expand_sigma(cond_scale.to(x0_cond), x0_cond), expand_sigma(negative_scale.to(x0_cond), x0_cond)
    return x0_uncond + w_c * (x0_cond - x0_uncond) - w_n * (x0_negative - x0_uncond)


class MultiCFGStudent(nn.Module):
    """What is trained and exported: the student UNet and the text encoder whose ``<neg>`` row is learnt."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    @property
    def token_embedding(self) -> nn.Parameter:
        return self.text_encoder.get_input_embeddings().weight


def add_negative_token(tokenizer, text_encoder: nn.Module) -> int:
    """Add ``<neg>`` to ``tokenizer`` and a row for it to ``text_encoder`` (in place), initialised to the mean of
    the other rows (deterministic); returns its id. A tokenizer that has it already keeps its row."""
    if NEGATIVE_TOKEN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(NEGATIVE_TOKEN)
    tokenizer.add_tokens([NEGATIVE_TOKEN])
    token_id = tokenizer.convert_tokens_to_ids(NEGATIVE_TOKEN)
    old = text_encoder.get_input_embeddings().weight.detach().clone()
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight[: old.shape[0]] = old
        weight[token_id] = old.mean(dim=0)
    return token_id


def encode_texts(tokenizer, text_encoder: nn.Module, texts: list[str]) -> Tensor:
    """The last hidden states of ``texts``, as ``StableDiffusionPipeline.encode_prompt`` computes them (padded to
    the tokenizer's length, the attention mask only where the encoder's config asks), with gradients."""
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    device = text_encoder.device
    mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


class MultiCFGRecipe:
    """Multi-CFG distillation of ``model``; one trainer phase, ``student`` (the UNet and the ``<neg>`` row)."""

    def __init__(self, model: TextToImageModel, config: MultiCFGConfig):
        check_config(config, config.KIND)
        pipe = model.pipe
        if getattr(pipe, "text_encoder_2", None) is not None or model.family != "vp":
            raise UserError("multi_cfg distills Stable Diffusion 1.x/2.x-style teachers (one CLIP text encoder); "
                            "SDXL and flow teachers are not supported")
        self.model, self.config = model, config
        unet = guidance_student(model.network, 2 * SCALE_EMBEDDING_WIDTH)
        self.models = TeacherStudent(model, unet)
        self.tokenizer = copy.deepcopy(pipe.tokenizer)
        text_encoder = copy.deepcopy(pipe.text_encoder).requires_grad_(False)
        self.token_id = add_negative_token(self.tokenizer, text_encoder)
        self.student = MultiCFGStudent(unet, text_encoder)
        self._frozen_rows = self.student.token_embedding.detach().clone()
        self._freeze_other_rows()
        self._teacher_negatives: dict[str, Tensor] = {}

    def _freeze_other_rows(self) -> None:
        """Only the ``<neg>`` row of the token embeddings gets a gradient (``after_update`` also restores the
        others, so weight decay cannot move them)."""
        weight = self.student.token_embedding
        weight.requires_grad_(True)
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[self.token_id] = 1
        weight.register_hook(lambda grad: grad * mask.to(grad.device, grad.dtype))

    # --- the Recipe protocol ----------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        groups = (ParamGroup("unet", list(self.student.unet.parameters())),
                  ParamGroup("negative_token", [self.student.token_embedding], self.config.token_lr))
        return [Phase("student", [p for g in groups for p in g.parameters], groups=groups)]

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "teacher": self.models.teacher_unet}

    def ema_module(self) -> str | None:
        return "student"

    @torch.no_grad()
    def after_update(self, update: Update) -> None:
        """Put back every token row but ``<neg>`` (an optimizer's weight decay would move them)."""
        weight = self.student.token_embedding
        keep = torch.ones(weight.shape[0], dtype=torch.bool)
        keep[self.token_id] = False
        weight[keep.to(weight.device)] = self._frozen_rows[keep].to(weight.device, weight.dtype)

    def loss(self, batch: DistillBatch, phase: str, step: int, generator: torch.Generator) -> Loss:
        if phase != "student":
            raise ValueError(f"unknown phase {phase!r}; multi_cfg has one phase, student")
        if batch.latents is None:
            raise UserError("multi_cfg distillation noises real latents: set data.with_latents: true")
        x0, n = batch.latents, batch.latents.shape[0]
        sigma, eps = draw_sigma_and_noise(self.models, x0, generator)
        x = x0 + expand_sigma(sigma, x0) * eps
        negatives = self.draw_negatives(batch.prompts, generator)
        w_c, w_n = self.draw_scales(n, generator)
        with torch.no_grad():
            target = self.guided_target(x, sigma, batch, negatives, w_c, w_n)
        prediction = self.student_prediction(x, sigma, batch.cond, negatives, w_c, w_n)
        weights = loss_weights(sigma.float(), self.config.weighting, self.config.snr_gamma)
        teacher_term = weighted_mse(prediction.float(), target.float(), weights)
        data_term = weighted_mse(prediction.float(), x0.float(), weights)
        total = self.config.teacher_weight * teacher_term + self.config.data_weight * data_term
        return Loss(total, {"teacher": teacher_term.item(), "data": data_term.item(),
                            "mse": (prediction.detach() - target).pow(2).mean().item()})

    # --- pieces (public for tests, evaluation and the benchmark) -----------------------------------

    def draw_negatives(self, prompts: list[str], generator: torch.Generator) -> list[str]:
        """One negative per row: a listed negative prompt, else the next row's caption; some rows empty."""
        n, listed = len(prompts), self.config.negative_prompts
        if listed is None:
            negatives = [prompts[(i + 1) % n] for i in range(n)]
        else:
            negatives = [listed[i] for i in torch.randint(len(listed), (n,), generator=generator).tolist()]
        empty = (torch.rand(n, generator=generator) < self.config.empty_negative_prob).tolist()
        return ["" if e else negative for negative, e in zip(negatives, empty)]

    def draw_scales(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(w_c, w_n) per row, uniform in their ranges; w_n = 0 on a share ``zero_negative_scale_prob``."""
        (c_low, c_high), (n_low, n_high) = self.config.cond_scale_range, self.config.negative_scale_range
        u = torch.rand(3, n, generator=generator)
        w_n = torch.where(u[2] < self.config.zero_negative_scale_prob, 0.0, n_low + (n_high - n_low) * u[1])
        return c_low + (c_high - c_low) * u[0], w_n

    def teacher_negatives(self, negatives: list[str]) -> TextCondition:
        """The teacher's encoding of each negative prompt (its empty prompt for ""), cached per text."""
        missing = sorted({text for text in negatives if text not in self._teacher_negatives})
        if missing:
            cond, _ = self.model.encode_batch(missing)
            self._teacher_negatives.update({text: cond.embeds[i:i + 1] for i, text in enumerate(missing)})
        return TextCondition(torch.cat([self._teacher_negatives[text] for text in negatives]))

    def guided_target(self, x: Tensor, sigma: Tensor, batch: DistillBatch, negatives: list[str], w_c: Tensor,
                      w_n: Tensor) -> Tensor:
        """The teacher's three-condition guidance at (x, sigma): one call of 3B rows."""
        conds = TextCondition.concat([batch.cond, self.teacher_negatives(negatives), batch.uncond])
        x0_c, x0_n, x0_u = self.models.teacher()(torch.cat([x, x, x]), sigma.repeat(3), conds).chunk(3)
        return multi_cfg_target(x0_c, x0_n, x0_u, w_c, w_n)

    def student_condition(self, cond: TextCondition, negatives: list[str]) -> TextCondition:
        """The prompt's encoding followed by the student text encoder's ``"<neg> " + negative`` (with grad)."""
        negative = encode_texts(self.tokenizer, self.student.text_encoder, [negative_text(t) for t in negatives])
        return TextCondition(torch.cat([cond.embeds, negative.to(cond.embeds)], dim=1))

    def student_prediction(self, x: Tensor, sigma: Tensor, cond: TextCondition, negatives: list[str], w_c: Tensor,
                           w_n: Tensor) -> Tensor:
        """The student's one pass at scales (w_c, w_n) per row."""
        denoiser = self.model.denoiser(w_c, len(w_c), network=self.student.unet, boundary=None, negative_guidance=w_n)
        return denoiser(x, sigma, self.student_condition(cond, negatives))

    def pipeline(self, teacher_pipe, student: MultiCFGStudent, scheduler=None) -> MultiCFGPipeline:
        """The exported student: the teacher's VAE and scheduler, the student's UNet, tokenizer (with ``<neg>``)
        and text encoder (``scheduler``, the generic export's choice, is ignored: the teacher's is kept)."""
        teacher_scheduler = type(teacher_pipe.scheduler).from_config(teacher_pipe.scheduler.config)
        return MultiCFGPipeline(vae=teacher_pipe.vae, text_encoder=student.text_encoder, tokenizer=self.tokenizer,
                                unet=student.unet, scheduler=teacher_scheduler,
                                default_guidance_scale=self.config.guidance_scale)
