"""``gendistill stylize``: Attention Distillation (Zhou et al., CVPR 2025, arXiv 2502.20235; reference code
github.com/xugao97/AttentionDistillation) with a reference image's style.

Two modes, as the paper's:

- **style transfer** (``--content IMAGE``): the content image's latents (or noise) optimised on the one trainer
  (``run_scene_2d``: checkpoints, ``--resume``, the NaN policy, Ctrl-C keeps the last state) under
  ``score.attention_distillation.AttentionDistillation``: ``L_AD`` toward the reference plus ``L_c`` toward the
  content, one Adam step per timestep of the model's DDIM grid, high to low;
- **text-to-image with a style** (no ``--content``): the prompt sampled by DDIM with CFG, each step followed by
  attention-distillation guidance toward the reference (``score.attention_guide``).

The run folder (``stylize_outputs.py``) gets stylized.png (the content's size when given), strip.png
(content | reference | output), curves.png, metrics.json and config.yaml.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config, load_config, save_config
from gendistill.devices import pick_device
from gendistill.diffusion.guidance import CFGDenoiser
from gendistill.diffusion.samplers import initial_scale, sample_euler
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.jobs.score_2d.run import Run2DConfig, run_scene_2d, scene_history
from gendistill.jobs.score_2d.stylize_outputs import StylizeResult, write_outputs
from gendistill.render.images import load_image
from gendistill.render.scenes.latents import LatentSceneConfig
from gendistill.score.attention_distillation import ADLossConfig, AttentionDistillationConfig
from gendistill.score.attention_guide import AttentionGuide, SamplerGuidanceConfig, adain
from gendistill.score.teacher import image_latents
from gendistill.train.trainer import TrainResult

INITS = ("content", "noise", "adain")


@dataclass
class TransferConfig:
    """Style transfer (with a content image): Adam on the latents, one step per timestep of the DDIM grid."""

    init: Literal["content", "noise", "adain"] = "content"
    """Start from the content image's latents (content), from Gaussian noise (noise), or from the content's
    latents with each channel's mean and std set to the reference's (adain, as the sampler mode's AdaIN)."""
    lr: float = 0.05
    """Adam's learning rate on the latents (the reference code's 0.05)."""
    run: Run2DConfig = field(default_factory=Run2DConfig)
    """Steps (the reference code: 200 for style transfer), checkpoints and the NaN policy."""

    def check(self, path: str) -> None:
        check_choice(key_path(path, "init"), self.init, INITS)
        check_range(key_path(path, "lr"), self.lr, 0.0)


@dataclass
class SampleConfig:
    """Text-to-image with the reference's style (no content image): DDIM with CFG plus AD guidance."""

    steps: int = 50
    """DDIM steps."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale of each DDIM step."""
    num_images: int = 1
    """Images to generate (one seed, as diffusers' num_images_per_prompt)."""
    guide: SamplerGuidanceConfig = field(default_factory=SamplerGuidanceConfig)
    """The attention-distillation guidance after each step (lr 0: the plain sampler)."""

    def check(self, path: str) -> None:
        check_range(key_path(path, "steps"), self.steps, 1)
        check_range(key_path(path, "guidance_scale"), self.guidance_scale, 0.0)
        check_range(key_path(path, "num_images"), self.num_images, 1)


@dataclass
class StylizeConfig:
    """A ``gendistill stylize`` run (YAML files in configs/stylize/ load into it)."""

    model: str = "shapes-teacher"
    """Diffusers UNet text-to-image folder, shipped model (shapes-teacher) or hub id."""
    loss: ADLossConfig = field(default_factory=lambda: ADLossConfig(layers=2, content_weight=0.5))
    """The attention-distillation loss (layers, weights), as tuned for the shapes teacher (whose decoder has 2
    self-attentions at 8x8 tokens); the paper's SD 1.5 values are configs/stylize/sd15-stylize.yaml's."""
    transfer: TransferConfig = field(default_factory=lambda: TransferConfig(lr=0.02))
    """Style-transfer mode (with --content)."""
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(guide=SamplerGuidanceConfig(lr=0.1, steps=3)))
    """Text-to-image mode (without --content); the guidance as tuned for the shapes teacher."""
    seed: int = 0
    """Seed of the noise (initial latents, sampler noise, the guidance's reference noise)."""
    progress: bool = True
    """Show a progress bar with ETA."""
    device: str = "auto"
    """torch device; auto picks cuda when available."""

    def check(self, path: str) -> None:
        """Each section checks its own values."""


def load_stylize_config(path: str | Path | None = None, overrides: list[str] | None = None) -> StylizeConfig:
    """``load_config`` for stylize: the YAML file and ``key=value`` overrides on top of the defaults."""
    return load_config(StylizeConfig, path, overrides)


@dataclass(frozen=True)
class StylizeInputs:
    """What a run reads: the reference, the prompt and (style transfer) the content image."""

    reference: Path
    prompt: str
    content: Path | None = None


def validate(inputs: StylizeInputs, config: StylizeConfig) -> None:
    """One-line UserErrors for inputs a user can get wrong, before any model is loaded."""
    if not inputs.prompt.strip():
        raise UserError("the prompt is empty; describe the image, e.g. 'a red cube'")
    for name, path in (("--reference", inputs.reference), ("--content", inputs.content)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{name} {path} is not a file; give a PNG or JPEG image")
    check_config(config)


def run_stylize(inputs: StylizeInputs, config: StylizeConfig, out_dir: str | Path, progress: bool = True,
                resume: bool = False, log: Callable[[str], None] | None = None) -> StylizeResult:
    """Run either mode (style transfer when ``inputs.content`` is given) and write every output to ``out_dir``."""
    validate(inputs, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    reference = load_image(inputs.reference, "--reference")
    content = None if inputs.content is None else load_image(inputs.content, "--content")
    device = pick_device(config.device)
    model = TextToImageModel(load_pipeline(config.model, device=str(device)))
    if content is None:
        return _generate(model, inputs, config, reference, out_dir, progress and config.progress)
    return _transfer(model, inputs, config, reference, content, out_dir, progress and config.progress, resume,
                     log)


def _transfer(model: TextToImageModel, inputs: StylizeInputs, config: StylizeConfig, reference: Tensor,
              content: Tensor, out_dir: Path, progress: bool, resume: bool, log) -> StylizeResult:
    device = model.network.device
    content_latents, reference_latents = image_latents(model, content), image_latents(model, reference)
    t = config.transfer
    start = adain(content_latents, reference_latents) if t.init == "adain" else content_latents
    if t.init == "noise":
        generator = torch.Generator().manual_seed(config.seed)
        start = torch.randn(content_latents.shape, generator=generator).to(device)
    scene = LatentSceneConfig(lr=t.lr, betas=(0.9, 0.999)).build(start, model.decode)
    guidance = AttentionDistillationConfig(loss=config.loss).build(model, reference_latents, content_latents)

    def write(result: TrainResult) -> StylizeResult:
        history = _with_trace(scene_history(result), guidance.trace)
        return write_outputs(out_dir, config, inputs, "transfer", scene.image().unsqueeze(0), reference, content,
                             history, result.seconds, result.stopped, result.step)

    return run_scene_2d(scene, guidance, inputs.prompt.strip(), model.image_size(), t.run, config.seed, out_dir,
                        write, device, progress=progress, resume=resume, log=log, description="stylize")


def _with_trace(history: list[dict], trace: list[dict]) -> list[dict]:
    """The trainer's rows with the guidance's own terms (ad, content) of the same step added."""
    by_step = {row["step"]: row for row in trace}
    return [{**row, **{k: v for k, v in by_step.get(row["step"], {}).items() if k in ("ad", "content")}}
            for row in history]


def _generate(model: TextToImageModel, inputs: StylizeInputs, config: StylizeConfig, reference: Tensor,
              out_dir: Path, progress: bool) -> StylizeResult:
    start = time.perf_counter()
    images, trace = stylized_samples(model, inputs.prompt.strip(), image_latents(model, reference), config,
                                     progress)
    return write_outputs(out_dir, config, inputs, "sample", images, reference, None, trace,
                         time.perf_counter() - start, None, config.sample.steps)


def stylized_samples(model: TextToImageModel, prompt: str, reference: Tensor, config: StylizeConfig,
                     progress: bool = False) -> tuple[Tensor, list[dict]]:
    """``config.sample.num_images`` images (K, 3, H, W) of ``prompt`` by DDIM with CFG and attention-distillation
    guidance toward ``reference`` latents; and the guidance's per-step trace."""
    from tqdm.auto import tqdm

    s = config.sample
    device = model.network.device
    generator = torch.Generator(device).manual_seed(config.seed)
    cond, uncond = model.encode(prompt, None, s.num_images)
    denoiser = CFGDenoiser(model.denoiser(), uncond, s.guidance_scale)
    plan = model.plan("ddim", s.steps)
    noise = torch.randn(model.latent_shape(s.num_images), generator=generator, device=device)
    x = noise * initial_scale(float(plan.sigmas[0]), plan.noise_scaling)
    guide = AttentionGuide(model, config.loss, s.guide, reference, generator)
    last = None
    with torch.no_grad():
        steps = sample_euler(denoiser, x, plan.sigmas, cond, guide=guide, generator=generator)
        for last in tqdm(steps, total=s.steps, desc="stylize", disable=not progress, leave=False):
            pass
        images = model.decode(last.x * plan.final_latent_scale)
    return images, guide.trace

