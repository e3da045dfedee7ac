"""Text-to-image generation through the canonical interface: what ``gendistill generate`` runs.

The seed-to-noise convention is diffusers' own (one ``torch.Generator`` seeded once, one ``randn`` of the
whole latent batch), so a seed gives the images users already know from the stock pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from gendistill.backends.sampling_route import SamplingRoute, route_for, say_once
from gendistill.backends.scheduler_driver import TimestepUnits, sample_with_scheduler
from gendistill.backends.text_to_image import Boundary, TextToImageModel
from gendistill.diffusion.adapters import network_dtype
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
    negative_guidance: float = 0.0
    """A multi-CFG student only: the negative prompt's guidance scale, applied in the same single pass."""
    guidance_rescale: float = 0.0
    seed: int = 0
    num_images: int = 1
    karras: bool = False
    base_steps: int = 0
    """Hybrid sampling: the base model takes the first ``base_steps`` of the ``steps``, the model the rest."""
    base_guidance: float = 1.0
    """Guidance of the base model's steps. 1 (conditional only, one evaluation) is what restores diversity: on the
    4-step DMD2 student, 1+3 steps gave diversity 0.93 at base guidance 1 and 0.63 at 4 (benchmarks/results/
    step_distillation.md)."""
    scheduler: str | None = None
    """A diffusers scheduler class name to sample with instead of the pipeline's own (built from its config)."""
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
    sampler: str = ""
    """What sampled them: the scheduler's class name (auto) or the named sampler."""
    targets: Tensor | None = None
    """With ``keep_targets``: each step's x0 prediction (the diffusion target), (steps, K, C, h, w) latents."""

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
    check_range("negative guidance", request.negative_guidance, 0)
    check_range("guidance rescale", request.guidance_rescale, 0, 1)
    check_range("eta", request.eta, 0, 1)
    if request.eta > 0 and request.sampler not in (*STOCHASTIC, "auto"):
        raise UserError(f"eta needs a stochastic sampler ({', '.join(STOCHASTIC)}), not {request.sampler!r}")
    if request.scheduler is not None and request.sampler != "auto":
        raise UserError(f"--scheduler runs a diffusers scheduler; it needs --sampler auto, not {request.sampler!r}")
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


def guided_denoiser(model: TextToImageModel, request: GenerationRequest, guidance: float,
                    boundary: Boundary = "pipeline"):
    """(CFG denoiser, condition, evaluation counter); ``boundary`` as in ``TextToImageModel.denoiser``."""
    cond, uncond = _conditions(model, request)
    negative_guidance = request.negative_guidance if getattr(model, "negative_token", None) else None  # multi-CFG
    counter = CountingDenoiser(model.denoiser(guidance, request.num_images, boundary=boundary,
                                              negative_guidance=negative_guidance), request.num_images)
    cfg_scale = 1.0 if model.embeds_guidance else guidance  # the UNet already applies the scale
    return CFGDenoiser(counter, uncond, cfg_scale, request.guidance_rescale), cond, counter


def swapped_scheduler(model: TextToImageModel, name: str | None):
    """The pipeline's scheduler, or the diffusers scheduler class ``name`` built from its config (what users do
    with ``pipe.scheduler = X.from_config(pipe.scheduler.config)``)."""
    if name is None:
        return model.pipe.scheduler
    import diffusers

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise UserError(f"{name!r} is not a diffusers scheduler class (e.g. DPMSolverMultistepScheduler, "
                        "UniPCMultistepScheduler)")
    return cls.from_config(model.pipe.scheduler.config)


def resolve_route(model: TextToImageModel, request: GenerationRequest) -> SamplingRoute:
    """How this request is sampled on this model (a note on stderr where auto cannot follow the scheduler)."""
    route = route_for(swapped_scheduler(model, request.scheduler), request.sampler, request.karras, request.eta)
    say_once(route.note)
    if route.sampler is not None and request.eta > 0 and route.sampler not in STOCHASTIC:
        raise UserError(f"eta needs a stochastic sampler ({', '.join(STOCHASTIC)}), not {route.sampler!r}")
    return route


@dataclass
class SamplingRun:
    """A step stream, its length, and the map from its last step to pipeline latents."""

    steps: Iterator[SamplerStep]
    total: int
    latents: Callable[[SamplerStep], Tensor]
    route: SamplingRoute


def sample_steps(model: TextToImageModel, request: GenerationRequest, base: TextToImageModel | None = None,
                 counters: list | None = None) -> SamplingRun:
    """The step stream for this request: through the pipeline's scheduler (auto) or a named sampler."""
    validate(request, has_base=base is not None)
    if model.interval_embedder is not None:
        return _flow_map_run(model, request, base, counters)
    route = resolve_route(model, request)
    if base is not None and base.latent_shape(1) != model.latent_shape(1):
        raise UserError("the base model's latent shape differs from the model's; they must share a VAE")
    boundary = None if route.scheduler is not None else "pipeline"  # LCMScheduler.step applies it itself
    denoiser, cond, counter = guided_denoiser(model, request, request.guidance, boundary)
    counters = [] if counters is None else counters
    counters.append(counter)
    base_denoiser = None
    if base is not None:
        base_denoiser, base_cond, base_counter = guided_denoiser(base, request, request.base_guidance, boundary)
        counters.append(base_counter)
        denoiser, base_denoiser, cond = _with_cond(denoiser, cond), _with_cond(base_denoiser, base_cond), None
    generator = torch.Generator(model.network.device).manual_seed(request.seed)
    # the driver keeps the pipeline's latents in the network's dtype, as prepare_latents draws them
    noise_dtype = network_dtype(model.network) if route.scheduler is not None else torch.float32
    noise = torch.randn(model.latent_shape(request.num_images), generator=generator,
                        device=model.network.device, dtype=noise_dtype)
    if route.scheduler is not None:
        return _scheduler_run(model, request, route, (base_denoiser, denoiser), cond, noise, generator)
    return _named_run(model, request, route, (base_denoiser, denoiser), cond, noise, generator)


def _scheduler_run(model, request, route, denoisers, cond, noise, generator) -> SamplingRun:
    """The pipeline's scheduler through the driver; a base model (hybrid) makes the first predictions."""
    base_denoiser, denoiser = denoisers
    if base_denoiser is not None:
        denoiser = HandOver(base_denoiser, request.base_steps * getattr(route.scheduler, "order", 1), denoiser)
    steps = sample_with_scheduler(route.scheduler, denoiser, noise, cond, request.steps, TimestepUnits.of(model),
                                  generator=generator, eta=request.eta, patch_size=model.patch_size)
    return SamplingRun(steps, len(route.scheduler.timesteps), lambda step: step.latents, route)


def _named_run(model, request, route, denoisers, cond, noise, generator) -> SamplingRun:
    """A named gendistill sampler on the model's schedule; a base model (hybrid) takes the first steps (Euler)."""
    base_denoiser, denoiser = denoisers
    plan = model.plan(route.sampler, request.steps, route.karras)
    x = noise * initial_scale(float(plan.sigmas[0]), plan.noise_scaling)
    options = {"eta": request.eta} if route.sampler in STOCHASTIC else {}
    sampler = SAMPLERS[route.sampler]
    to_latents = lambda step: step.x * plan.final_latent_scale  # noqa: E731
    if base_denoiser is None:
        return SamplingRun(sampler(denoiser, x, plan.sigmas, cond, generator=generator, **options), request.steps,
                           to_latents, route)
    head, tail = split_for_hybrid(plan.sigmas, request.base_steps)
    stages = [HybridStage(sample_euler, base_denoiser, head), HybridStage(sampler, denoiser, tail, options)]
    return SamplingRun(sample_hybrid(stages, x, None, generator=generator), request.steps, to_latents, route)


def _flow_map_run(model: TextToImageModel, request: GenerationRequest, base, counters) -> SamplingRun:
    """A MeanFlow student: jumps ``z_r = z_t - (t - r) u`` on its scheduler's grid, as its pipeline samples (same
    noise, same arithmetic), with CFG on u when ``guidance > 1`` (as the pipeline's ``guidance_scale``)."""
    from gendistill.backends.meanflow_pipeline import flow_map_sigmas, flow_map_steps, interval_velocity

    if base is not None or request.sampler != "auto" or request.scheduler is not None or request.karras \
            or request.eta > 0:
        raise UserError("a MeanFlow student samples by its own flow map: use --sampler auto, without --scheduler, "
                        "--karras, --eta or --base-model")
    cond, uncond = _conditions(model, request)
    guided = request.guidance > 1
    both = uncond.cat(cond) if guided else cond
    network, T = model.network, model.num_train_timesteps
    dtype = network_dtype(network)
    embeds, pooled = both.embeds.to(dtype), both.pooled.to(dtype)
    counter = CountingDenoiser(None, request.num_images)
    counters.append(counter)

    def velocity(z, t, r):
        n = 2 if guided else 1
        counter.nfe += n
        u = interval_velocity(network, model.interval_embedder, z.repeat(n, 1, 1, 1), t.repeat(n), r.repeat(n),
                              embeds, pooled, T)
        if not guided:
            return u
        u_uncond, u_cond = u.chunk(2)
        return u_uncond + request.guidance * (u_cond - u_uncond)

    generator = torch.Generator(network.device).manual_seed(request.seed)
    noise = torch.randn(model.latent_shape(request.num_images), generator=generator, device=network.device,
                        dtype=dtype)
    sigmas = flow_map_sigmas(request.steps, float(model.config.get("shift", 1.0)))

    def steps() -> Iterator[SamplerStep]:
        z = noise
        for i, z_next, u in flow_map_steps(velocity, noise, sigmas, T):
            t, r = float(sigmas[i]), float(sigmas[i + 1])
            yield SamplerStep(i, z_next, r / (1 - r), (z - t * u).to(z.dtype))  # x0 if u held down to t = 0
            z = z_next

    route = SamplingRoute(scheduler=swapped_scheduler(model, None))
    return SamplingRun(steps(), request.steps, lambda step: step.x, route)


class HandOver:
    """Hybrid sampling on a scheduler: ``first`` makes the first ``calls`` predictions, ``rest`` the others."""

    def __init__(self, first, calls: int, rest):
        self.first, self.calls, self.rest, self.made = first, calls, rest, 0

    def __call__(self, x, sigma, cond=None):
        denoiser = self.first if self.made < self.calls else self.rest
        self.made += 1
        return denoiser(x, sigma, cond)


def _with_cond(denoiser, cond) -> Callable:
    """Bind a stage's own condition (base and student encode the prompt with their own text encoders)."""
    return lambda x, sigma, _ignored=None: denoiser(x, sigma, cond)


@torch.inference_mode()
def generate(model: TextToImageModel, request: GenerationRequest, base: TextToImageModel | None = None,
             progress: bool = True, keep_targets: bool = False) -> GenerationResult:
    """Sample ``request.num_images`` images; returns images, latents, NFE per image and wall-clock (and, with
    ``keep_targets``, every step's x0 prediction)."""
    start = time.perf_counter()
    counters: list = []
    run = sample_steps(model, request, base, counters)
    last, targets = None, []
    for last in tqdm(run.steps, total=run.total, desc="sampling", disable=not progress, leave=False):
        if keep_targets:
            targets.append(last.denoised.float())
    latents = run.latents(last)
    images = model.decode(latents)
    seconds = time.perf_counter() - start
    return GenerationResult(images, latents, sum(c.nfe for c in counters), seconds, run.route.label,
                            torch.stack(targets) if keep_targets else None)
