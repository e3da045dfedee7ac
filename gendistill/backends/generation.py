"""Text-to-image generation through the canonical interface: what ``gendistill generate`` runs.

The seed-to-noise convention is diffusers' own (one ``torch.Generator`` seeded once, one ``randn`` of the
whole latent batch), so a seed gives the images users already know from the stock pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.samplers import (
    SAMPLERS, STOCHASTIC, HybridStage, SamplerStep, initial_scale, sample_euler, sample_hybrid, split_for_hybrid,
)
from gendistill.errors import UserError, check_choice, check_range


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides the images, given the model."""

    prompt: str
    negative_prompt: str | None = None
    steps: int = 25
    sampler: str = "auto"
    eta: float = 0.0
    guidance: float = 7.5
    guidance_rescale: float = 0.0
    seed: int = 0
    num_images: int = 1
    karras: bool = False
    base_steps: int = 0
    """Hybrid sampling: the base model takes the first ``base_steps`` of the ``steps``, the model the rest."""
    base_guidance: float = 7.5
    prompts: tuple[str, ...] | None = None
    """One image per prompt instead of ``num_images`` of ``prompt`` (evaluation batches); no negative prompt."""

    @staticmethod
    def for_prompts(prompts, **kwargs) -> GenerationRequest:
        """A request for one image of each prompt."""
        prompts = tuple(prompts)
        return GenerationRequest(prompt=prompts[0] if prompts else "", prompts=prompts, num_images=len(prompts),
                                 **kwargs)


@dataclass(frozen=True)
class GenerationResult:
    """Images in [0, 1] (K, 3, H, W), the final latents, and what they cost."""

    images: Tensor
    latents: Tensor
    nfe: float
    seconds: float

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images.shape[0]


def validate(request: GenerationRequest, has_base: bool = False) -> None:
    """Raise a UserError for any value a user could get wrong."""
    if not request.prompt.strip() or (request.prompts is not None and not all(p.strip() for p in request.prompts)):
        raise UserError("prompt is empty; give a text prompt")
    if request.prompts is not None and len(request.prompts) != request.num_images:
        raise UserError("with a list of prompts, num_images must equal the number of prompts")
    check_choice("sampler", request.sampler, [*SAMPLERS, "auto"])
    if request.steps < 1:
        raise UserError(f"steps must be at least 1, got {request.steps}")
    check_range("guidance", request.guidance, 0)
    check_range("guidance rescale", request.guidance_rescale, 0, 1)
    check_range("eta", request.eta, 0, 1)
    if request.eta > 0 and request.sampler not in (*STOCHASTIC, "auto"):
        raise UserError(f"eta needs a stochastic sampler ({', '.join(STOCHASTIC)}), not {request.sampler!r}")
    if request.num_images < 1:
        raise UserError(f"num-images must be at least 1, got {request.num_images}")
    if request.base_steps < 0 or (request.base_steps > 0 and not has_base):
        raise UserError("base-steps needs --base-model and must be >= 0")
    if request.base_steps >= request.steps and has_base:
        raise UserError(f"base-steps must be less than steps ({request.steps}): the model takes the rest")


class CountingDenoiser:
    """Counts network evaluations per image (a CFG step on a doubled batch counts 2)."""

    def __init__(self, inner, num_images: int):
        self.inner, self.num_images, self.nfe = inner, num_images, 0.0

    def __call__(self, x, sigma, cond=None):
        self.nfe += x.shape[0] / self.num_images
        return self.inner(x, sigma, cond)


def _conditions(model: TextToImageModel, request: GenerationRequest):
    if request.prompts is not None:
        return model.encode_batch(list(request.prompts))
    return model.encode(request.prompt, request.negative_prompt, request.num_images)


def guided_denoiser(model: TextToImageModel, request: GenerationRequest, guidance: float):
    cond, uncond = _conditions(model, request)
    counter = CountingDenoiser(model.denoiser(guidance, request.num_images), request.num_images)
    cfg_scale = 1.0 if model.embeds_guidance else guidance  # the UNet already applies the scale
    return CFGDenoiser(counter, uncond, cfg_scale, request.guidance_rescale), cond, counter


def resolve_sampler(model: TextToImageModel, request: GenerationRequest) -> GenerationRequest:
    """Replace sampler "auto" by the one that follows the pipeline's own scheduler."""
    if request.sampler != "auto":
        return request
    request = replace(request, sampler=model.default_sampler())
    if request.eta > 0 and request.sampler not in STOCHASTIC:
        raise UserError(f"eta needs a stochastic sampler ({', '.join(STOCHASTIC)}); this model's default is "
                        f"{request.sampler!r}")
    return request


def sample_steps(model: TextToImageModel, request: GenerationRequest, base: TextToImageModel | None = None,
                 counters: list | None = None) -> tuple[Iterator[SamplerStep], float]:
    """The step stream for this request and the factor from the final state to pipeline latents."""
    validate(request, has_base=base is not None)
    request = resolve_sampler(model, request)
    denoiser, cond, counter = guided_denoiser(model, request, request.guidance)
    plan = model.plan(request.sampler, request.steps, request.karras)
    generator = torch.Generator(model.network.device).manual_seed(request.seed)
    noise = torch.randn(model.latent_shape(request.num_images), generator=generator,
                        device=model.network.device, dtype=torch.float32)
    x = noise * initial_scale(float(plan.sigmas[0]), plan.noise_scaling)
    options = {"eta": request.eta} if request.sampler in STOCHASTIC else {}
    sampler = SAMPLERS[request.sampler]
    if counters is not None:
        counters.append(counter)
    if base is None:
        return sampler(denoiser, x, plan.sigmas, cond, generator=generator, **options), plan.final_latent_scale
    if base.latent_shape(1) != model.latent_shape(1):
        raise UserError("the base model's latent shape differs from the model's; they must share a VAE")
    base_denoiser, base_cond, base_counter = guided_denoiser(base, request, request.base_guidance)
    if counters is not None:
        counters.append(base_counter)
    head, tail = split_for_hybrid(plan.sigmas, request.base_steps)
    stages = [HybridStage(sample_euler, _with_cond(base_denoiser, base_cond), head),
              HybridStage(sampler, _with_cond(denoiser, cond), tail, options)]
    return sample_hybrid(stages, x, None, generator=generator), plan.final_latent_scale


def _with_cond(denoiser, cond) -> Callable:
    """Bind a stage's own condition (base and student encode the prompt with their own text encoders)."""
    return lambda x, sigma, _ignored=None: denoiser(x, sigma, cond)


@torch.inference_mode()
def generate(model: TextToImageModel, request: GenerationRequest, base: TextToImageModel | None = None,
             progress: bool = True) -> GenerationResult:
    """Sample ``request.num_images`` images; returns images, latents, NFE per image and wall-clock."""
    start = time.perf_counter()
    counters: list = []
    steps, latent_scale = sample_steps(model, request, base, counters)
    total = request.steps
    x = None
    for step in tqdm(steps, total=total, desc="sampling", disable=not progress, leave=False):
        x = step.x
    latents = x * latent_scale
    images = model.decode(latents)
    seconds = time.perf_counter() - start
    return GenerationResult(images, latents, sum(c.nfe for c in counters), seconds)
