"""``gendistill sketch``: a prompt drawn as N cubic Bezier strokes (DiffSketcher).

DiffSketcher (Xing et al. 2023, "DiffSketcher: Text Guided Vector Sketch Synthesis through Latent Diffusion
Models", arXiv 2306.14685; code: ximinng/DiffSketcher): the strokes start where the teacher attends to the
prompt's object word while it generates the prompt (``score/attention_maps.py``), and are optimised by augmented
SDS (``score/augmented.py``: random perspective and crop before the VAE encodes the render), through the
pure-PyTorch rasterizer of ``render/strokes.py``, on the generic 2D job (``run.py``: the one trainer,
checkpoints, ``--resume``, a clean stop). Not done here: the reference's CLIP and LPIPS losses and its XDoG
edge mask at initialisation.

The run folder gets sketch.svg, sketch.png, strokes.safetensors, progress.gif, curves.png, metrics.json,
init.png (the generation whose attention placed the strokes, beside the start map) and config.yaml. A stopped
or interrupted run (Ctrl-C) writes them from the strokes so far, then re-raises.
"""

from __future__ import annotations

import dataclasses
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
from gendistill.diffusion.timesteps import TimestepRange
from gendistill.errors import UserError, check_choice, check_range, key_path
from gendistill.jobs.score_2d.run import OnStep, Run2DConfig, run_scene_2d, scene_history
from gendistill.jobs.score_2d.sketch_outputs import SketchResult, write_sketch_outputs
from gendistill.render.scenes.strokes import StrokeSceneConfig
from gendistill.score.attention_maps import AttentionInitConfig, AttentionMaps, attention_maps, start_probabilities
from gendistill.score.augmented import AugmentedSDSConfig
from gendistill.score.sds import SDSConfig
from gendistill.train.trainer import TrainResult

INITS = ("attention", "random")


def default_method() -> AugmentedSDSConfig:
    """ASDS as DiffSketcher runs it (t in [0.05, 0.95], SDS weighting), CFG tuned for the shapes teacher."""
    return AugmentedSDSConfig(sds=SDSConfig(guidance_scale=7.5, timesteps=TimestepRange(0.05, 0.95)))


@dataclass
class SketchConfig:
    """A sketch run: strokes, their initialisation, the guidance and how long it optimises."""

    prompt: str = ""
    """The text prompt (the command's PROMPT argument replaces it)."""
    model: str = "shapes-teacher"
    """Diffusers text-to-image folder, shipped model (shapes-teacher) or hub id whose score guides the strokes."""
    strokes: StrokeSceneConfig = field(default_factory=StrokeSceneConfig)
    """The strokes (``strokes.num_strokes`` is ``--strokes``), canvas, widths, colours and learning rates."""
    init: Literal["attention", "random"] = "attention"
    """Where strokes start: drawn from the teacher's attention to the prompt (DiffSketcher) or uniformly."""
    attention: AttentionInitConfig = field(default_factory=AttentionInitConfig)
    """The attention init's generation, words, map resolution and temperature."""
    method: AugmentedSDSConfig | SDSConfig = field(default_factory=default_method)
    """The guidance; ``kind:`` asds (augmented SDS, DiffSketcher) or sds (plain SDS, the ablation)."""
    run: Run2DConfig = field(default_factory=lambda: Run2DConfig(iterations=200, preview_every=10))
    """Steps, views per step, checkpoints, NaN policy; ``run.preview_every`` is the progress GIF's frame step."""
    gif_fps: int = 8
    """Frames per second of progress.gif."""
    seed: int = 0
    """Seed of the attention generation, the stroke init, augmentations, timesteps and noise."""
    progress: bool = True
    """Show a progress bar with ETA and the live loss."""
    device: str = "auto"
    """torch device; auto picks cuda when available."""

    def check(self, path: str) -> None:
        check_choice(key_path(path, "init"), self.init, INITS)
        check_range(key_path(path, "gif_fps"), self.gif_fps, 1)


def load_sketch_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SketchConfig:
    """``load_config`` for sketches: the YAML file and ``key=value`` overrides on top of the defaults."""
    return load_config(SketchConfig, path, overrides)


def validate(prompt: str, config: SketchConfig) -> None:
    """Every user error that needs no model, before any work."""
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty; describe what to draw, e.g. 'a red cube'")
    check_config(config)


def initial_map(model: TextToImageModel, prompt: str, config: SketchConfig) -> AttentionMaps | None:
    """The attention maps of the prompt's generation (None for the random init)."""
    if config.init == "random":
        return None
    return attention_maps(model, prompt, config.attention, config.seed)



def run_sketch(prompt: str, config: SketchConfig, out_dir: str | Path, progress: bool = True,
               on_step: OnStep | None = None, resume: bool = False,
               log: Callable[[str], None] | None = None, model: TextToImageModel | None = None) -> SketchResult:
    """Draw ``prompt`` (it replaces ``config.prompt``) as strokes and write every output to ``out_dir``.
    ``model`` (optional) is an already loaded ``config.model``, reused (benchmarks)."""
    validate(prompt, config)
    config = dataclasses.replace(config, prompt=prompt.strip())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    device = pick_device(config.device)
    model = model or TextToImageModel(load_pipeline(config.model, device=str(device)))
    maps = initial_map(model, config.prompt, config)
    start = None if maps is None else start_probabilities(maps.fused, config.strokes.canvas, config.attention.tau)
    scene = config.strokes.build(torch.Generator().manual_seed(config.seed), device, config.run.iterations, start)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(config.seed)
        guidance = config.method.build(model)
    size = (config.strokes.canvas, config.strokes.canvas)  # rendered at the canvas; the encoder resizes
    frames: list[Tensor] = [scene.draw(*size, "box").detach().cpu()]

    def keep_frame(step: int, preview: Tensor, loss: float) -> None:
        frames.append(preview.detach().float().cpu())
        if on_step is not None:
            on_step(step, preview, loss)

    def write(result: TrainResult) -> SketchResult:
        return write_sketch_outputs(config, scene, scene_history(result), result, frames, maps, out_dir)

    return run_scene_2d(scene, guidance, config.prompt, size, config.run, config.seed, out_dir, write,
                        device, progress=progress and config.progress, on_step=keep_frame, resume=resume, log=log,
                        description=f"sketch ({config.strokes.num_strokes} strokes)")
