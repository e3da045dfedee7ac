"""``gendistill edit IMAGE --prompt TARGET``: text-guided image editing by score distillation (LUSD by default;
DDS and plain SDS by config, for comparison).

The image's latents (VAE posterior mean) are the scene; the editing guidance (``score/edit.py``) pulls them
toward the target prompt on the generic 2D job. The result is written at the image's own size: by default the
change the edit made (decoded edit minus decoded source) is added to the original (``output: residual``), so the
VAE's own reconstruction error never reaches the untouched pixels; ``output: decoded`` writes the decoded edit.
DIR gets edited.png, before_after.png (source | edited | mask), mask.png, curves.png, metrics.json, config.yaml,
latents.safetensors and checkpoints/ (``--resume``); Ctrl-C still writes them from the last step.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import check_config, load_config, save_config
from gendistill.devices import pick_device
from gendistill.errors import UserError, check_choice
from gendistill.jobs.score_2d.run import OnStep, Run2DConfig, run_scene_2d, scene_history
from gendistill.render.images import load_image, make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.render.scenes.latents import LatentScene, LatentSceneConfig
from gendistill.score.edit import EditScore, EditScoreConfig
from gendistill.score.teacher import image_latents
from gendistill.train.trainer import TrainResult


def lusd_scene() -> LatentSceneConfig:
    """LUSD's optimiser: SGD at 2000/4096 on the normalised direction (the reference's effective step)."""
    return LatentSceneConfig(optimizer="sgd", lr=2000 / 4096)


@dataclass
class EditConfig:
    """An edit: the model whose score guides it, the guidance, the latents' optimiser and the run."""

    model: str = "shapes-teacher"
    """Diffusers text-to-image folder, shipped model or hub id."""
    method: EditScoreConfig = field(default_factory=EditScoreConfig)
    """The editing guidance (``base``: difference (LUSD), dds or sds; LUSD's mask, filter, normalisation)."""
    scene: LatentSceneConfig = field(default_factory=lusd_scene)
    """The latents' optimiser."""
    run: Run2DConfig = field(default_factory=lambda: Run2DConfig(iterations=200))
    """Steps, checkpoints and the NaN policy."""
    output: Literal["residual", "decoded"] = "residual"
    """residual: the original plus the edit's change, at the original's size; decoded: the decoded edit, resized."""
    seed: int = 0
    """Seed of the timesteps and noise."""
    progress: bool = True
    """Show a progress bar."""
    device: str = "auto"
    """torch device; auto picks cuda when available."""

    def check(self, path: str) -> None:
        check_choice(f"{path}.output" if path else "output", self.output, ("residual", "decoded"))


def load_edit_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EditConfig:
    """An ``EditConfig`` from a YAML file (or the defaults) and ``key=value`` overrides."""
    return load_config(EditConfig, path, overrides)


@dataclass(frozen=True)
class EditResult:
    """What an edit wrote and measured."""

    out_dir: Path
    edited: Tensor
    """The edited image, (3, H, W) in [0, 1], at the source image's size."""
    decoded: Tensor
    """The decoded edit at the source image's size (what ``output: decoded`` writes), (3, H, W)."""
    mask: Tensor
    """The guidance's final mask at the image's size, (H, W) in [0, 1] (ones without a mask)."""
    seconds: float
    steps: int
    stopped: bool


def _at_size(image: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image[None], size, mode="bicubic", align_corners=False, antialias=True)[0]


def edited_image(original: Tensor, decoded: Tensor, decoded_source: Tensor, output: str) -> Tensor:
    """The edit at the original's size: ``original + (decoded - decoded_source)`` (residual) or ``decoded``."""
    size = tuple(original.shape[-2:])
    if output == "decoded":
        return _at_size(decoded, size).clamp(0, 1)
    return (original + _at_size(decoded - decoded_source, size)).clamp(0, 1)


def run_edit(image: Tensor | str | Path, prompt: str, config: EditConfig, out_dir: str | Path,
             source_prompt: str = "", progress: bool = True, on_step: OnStep | None = None, resume: bool = False,
             log: Callable[[str], None] | None = None) -> EditResult:
    """Edit ``image`` ((3, H, W) in [0, 1] or a file) toward ``prompt``; ``source_prompt`` describes it."""
    if not prompt or not prompt.strip():
        raise UserError("the target prompt is empty; say what the image should become, e.g. 'a blue cube'")
    check_config(config)
    original = load_image(image) if isinstance(image, (str, Path)) else image.detach().float().cpu()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    device = pick_device(config.device)
    model = TextToImageModel(load_pipeline(config.model, device=str(device)))
    size = model.image_size()
    source = image_latents(model, _at_size(original, size))
    guidance = config.method.build(model, source, source_prompt.strip())
    scene = config.scene.build(source, model.decode)

    def write(result: TrainResult) -> EditResult:
        return _write(config, original, model, source, scene, guidance, result, out_dir, prompt.strip(),
                      source_prompt.strip())

    return run_scene_2d(scene, guidance, prompt.strip(), size, config.run, config.seed, out_dir, write, device,
                        progress=progress and config.progress, on_step=on_step, resume=resume, log=log,
                        description=f"edit ({config.method.base})")


def _write(config: EditConfig, original: Tensor, model: TextToImageModel, source: Tensor, scene: LatentScene,
           guidance: EditScore, result: TrainResult, out_dir: Path, prompt: str, source_prompt: str) -> EditResult:
    decoded, decoded_source = (model.decode(z).cpu()[0] for z in (scene.latents.detach(), source))
    edited = edited_image(original, decoded, decoded_source, config.output)
    size = tuple(original.shape[-2:])
    mask = _at_size(guidance.current_mask()[None].expand(3, -1, -1).cpu(), size)[0].clamp(0, 1)
    save_png(edited, out_dir / "edited.png")
    save_png(mask.expand(3, -1, -1), out_dir / "mask.png")
    save_png(make_grid(torch.stack([original, edited, mask.expand(3, -1, -1)]), columns=3), out_dir / "before_after.png")
    files = scene.export(out_dir)
    history = scene_history(result)
    plot_curves(history, out_dir / "curves.png", title=f"edit ({config.method.base}): {prompt}")
    metrics = {"prompt": prompt, "source_prompt": source_prompt, "mask_word": guidance.mask_word(prompt),
               "method": dataclasses.asdict(config.method), "model": config.model, "steps": result.step,
               "iterations": config.run.iterations, "stopped": result.stopped is not None,
               "stop_reason": result.stopped, "seconds": round(result.seconds, 2),
               "change_l1": (edited - original).abs().mean().item(), "size": list(size),
               "outputs": sorted(["edited.png", "mask.png", "before_after.png", "curves.png", "config.yaml",
                                  *(p.name for p in files)])}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return EditResult(out_dir, edited, edited_image(original, decoded, decoded_source, "decoded"), mask,
                      result.seconds, result.step, result.stopped is not None)

