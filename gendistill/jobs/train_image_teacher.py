"""``gendistill train-image-teacher``: fine-tune the shapes teacher into an image- and camera-conditioned
teacher (Isotropic3D's stage 1 in miniature, :mod:`gendistill.domains.shapes.image_teacher`) on the one
trainer, export it and write its model card.

Layout of ``out_dir``: ``config.yaml``, ``cache/`` (renders, their base-VAE latents and CLIP embeddings, remade
if absent), ``checkpoints/`` (``--resume`` continues exactly) and ``teacher/`` (``unet/`` in float16, ``vae/``,
``scheduler/``, ``gendistill.json``, README.md).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gendistill.config import save_config, to_dict
from gendistill.domains.shapes.image_teacher import (UNET_PHASE, ImageTeacherConfig, ImageTeacherRecipe,
                                                     PairBatches, embed_renders, image_camera_unet)
from gendistill.domains.shapes.teacher import DataConfig
from gendistill.domains.shapes.teacher_data import (encode_cache, encoder_fingerprint, load_or_make_latents,
                                                    load_or_make_renders, render_cache)
from gendistill.errors import UserError
from gendistill.jobs.train_clip import command_line
from gendistill.run_dir import prepare_out_dir
from gendistill.shipped import resolve_model_name
from gendistill.train.checkpoint import checkpoints_newest_first
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer


@dataclass(frozen=True)
class ImageTeacherRun:
    """What :func:`train_image_teacher` made."""

    out_dir: Path
    teacher_dir: Path
    seconds: float
    steps: int
    final_mse: float


@dataclass
class BaseTeacher:
    """The text-to-image teacher's parts the fine-tune starts from."""

    folder: Path
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object


def load_base(name: str) -> BaseTeacher:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(resolve_model_name(name))
    if not (folder / "unet").is_dir():
        raise UserError(f"base {name!r} is not a diffusers folder with a unet/ (e.g. shapes-teacher)")
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval().requires_grad_(False)
    return BaseTeacher(folder, UNet2DConditionModel.from_pretrained(folder / "unet"), vae,
                       DDPMScheduler.from_pretrained(folder / "scheduler"))


def trainer_config(config: ImageTeacherConfig) -> TrainerConfig:
    return TrainerConfig(steps=config.steps, seed=config.seed, grad_clip=1.0, log_every=10,
                         ema_decay=config.ema_decay, ema_warmup=True, checkpoint_every=config.checkpoint_every,
                         keep_checkpoints=2, optimizers={UNET_PHASE: OptimizerConfig(
                             kind="adamw", lr=config.lr, warmup_steps=config.warmup_steps)})


def training_data(config: ImageTeacherConfig, base: BaseTeacher, out_dir: Path, log) -> PairBatches:
    """Renders, their latents under the base VAE and their CLIP embeddings (each cached in ``out_dir/cache``)."""
    from gendistill.backends.open_clip_model import ClipImageEncoder

    cache = out_dir / "cache"
    data = DataConfig(cache_size=config.cache_size, render_batch=250)
    renders = load_or_make_renders(cache / "renders.safetensors", f"pairs seed={config.seed} n={config.cache_size}",
                                   lambda: render_cache(data, config.cache_size,
                                                        torch.Generator().manual_seed(20_000 + config.seed)))
    latents = load_or_make_latents(cache / "latents.safetensors", encoder_fingerprint(base.vae),
                                   lambda: encode_cache(base.vae, renders.images))
    encoder = ClipImageEncoder.load(resolve_model_name(config.clip))
    log(f"embedding {len(renders)} renders with {config.clip}")
    embeds = embed_renders(encoder, renders.images)
    return PairBatches(renders, latents, embeds, config.batch_size, config.cond_dropout)


def train_image_teacher(config: ImageTeacherConfig, out_dir: str | Path, resume: bool = False,
                        progress: bool = True, log: Callable[[str], None] = print) -> ImageTeacherRun:
    """Train (or resume) into ``out_dir`` and export ``out_dir/teacher`` (EMA weights) with its model card."""
    out_dir = prepare_out_dir(out_dir)
    found = bool(checkpoints_newest_first(out_dir / "checkpoints"))
    if resume != found:
        raise UserError(f"--resume: no checkpoint in {out_dir / 'checkpoints'}" if resume else
                        f"{out_dir / 'checkpoints'} already holds checkpoints; pass --resume or choose an empty --out")
    save_config(config, out_dir / "config.yaml")
    base = load_base(config.base)
    batches = training_data(config, base, out_dir, log)
    unet = image_camera_unet(base.unet, batches.embeds.shape[1], torch.Generator().manual_seed(config.seed))
    recipe = ImageTeacherRecipe(unet, base.scheduler, float(base.vae.config.scaling_factor), config)
    trainer = Trainer(recipe, trainer_config(config), out_dir, batches, progress=progress, log=log,
                      description="train-image-teacher")
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    if trainer.ema is not None:
        unet.load_state_dict(trainer.ema.shadow.state_dict())
    rows = [row[f"{UNET_PHASE}/mse"] for row in result.history if f"{UNET_PHASE}/mse" in row]
    final_mse = sum(rows[-10:]) / max(1, len(rows[-10:]))
    training = {"steps": result.step, "seconds_this_call": round(seconds, 1), "final_train_mse": round(final_mse, 4)}
    teacher_dir = export_teacher(unet, base, config, out_dir / "teacher", training)
    write_model_card(teacher_dir, config, training, log)
    return ImageTeacherRun(out_dir, teacher_dir, seconds, result.step, final_mse)


def export_from_checkpoint(config: ImageTeacherConfig, out_dir: str | Path, dest: Path | None = None,
                           log: Callable[[str], None] = print) -> Path:
    """Export ``out_dir/teacher`` (or ``dest``) with its model card from the newest readable checkpoint's EMA
    weights (e.g. of a run still training, or one that was stopped)."""
    from gendistill.train.checkpoint import load_module_state, read_newest_readable

    out_dir = Path(out_dir)
    if not checkpoints_newest_first(out_dir / "checkpoints"):
        raise UserError(f"no checkpoint in {out_dir / 'checkpoints'} to export")
    data, _ = read_newest_readable(out_dir / "checkpoints")
    base = load_base(config.base)
    embed_dim = int(data.weights["unet/encoder_hid_proj.weight"].shape[1])
    unet = image_camera_unet(base.unet, embed_dim, torch.Generator().manual_seed(config.seed))
    load_module_state(unet, data.ema if data.ema is not None else
                      {k[len("unet/"):]: v for k, v in data.weights.items() if k.startswith("unet/")})
    training = {"steps": int(data.meta["step"]), "seconds_this_call": 0.0, "final_train_mse": float("nan")}
    folder = export_teacher(unet, base, config, dest or out_dir / "teacher", training)
    write_model_card(folder, config, training, log)
    return folder


def export_teacher(unet: torch.nn.Module, base: BaseTeacher, config: ImageTeacherConfig, folder: Path,
                   training: dict) -> Path:
    """``folder``: the UNet in float16 (diffusers' save_pretrained), the base VAE and scheduler as they are,
    and ``gendistill.json`` naming the image encoder, the camera features and the null embedding."""
    from safetensors.torch import save_file

    (folder / "unet").mkdir(parents=True, exist_ok=True)
    unet.save_config(folder / "unet")  # the weights as save_pretrained writes them, cast to float16 on the way
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in unet.state_dict().items()}
    save_file(state, str(folder / "unet" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    for part in ("vae", "scheduler"):
        shutil.rmtree(folder / part, ignore_errors=True)
        shutil.copytree(base.folder / part, folder / part)
    card = {"kind": "image-camera-teacher", "image_encoder": config.clip, "camera_features": "camtoworld-4x4-flat",
            "null_embedding": "zeros", "guidance": config.guidance_scale, "base": config.base,
            "command": command_line(), "training": training, "config": to_dict(config)}
    (folder / "gendistill.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def write_model_card(folder: Path, config: ImageTeacherConfig, training: dict, log: Callable[[str], None]) -> dict:
    """Sample the exported teacher (:mod:`gendistill.domains.shapes.image_teacher_eval`), add the scores to
    gendistill.json and write README.md and samples.png."""
    from gendistill.backends.image_camera_model import ImageCameraModel
    from gendistill.backends.open_clip_model import ClipImageEncoder
    from gendistill.domains.shapes.classifier import load_classifier
    from gendistill.domains.shapes.image_teacher_eval import evaluate_teacher
    from gendistill.render.images import make_grid, save_png

    model = ImageCameraModel.load(folder)
    encoder = ClipImageEncoder.load(resolve_model_name(config.clip))
    scores, grid = evaluate_teacher(model, encoder, load_classifier("shapes-classifier"), config.guidance_scale)
    save_png(make_grid(grid, columns=16), folder / "samples.png")
    card_path = folder / "gendistill.json"
    card = json.loads(card_path.read_text())
    card["evaluation"] = {name: s.as_dict() for name, s in scores.items()}
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    image, null = scores["image"], scores["null"]
    log(f"samples from the reference embedding: prompt accuracy {image.prompt_accuracy:.3f}, "
        f"silhouette IoU {image.silhouette_iou:.3f} (null embedding: {null.prompt_accuracy:.3f})")
    (folder / "README.md").write_text(README.format(
        command=command_line(), c=config, t=training, minutes=training["seconds_this_call"] / 60, size=size / 1e6,
        i=image, n=null))
    return card


README = """# shapes-image-teacher

An image- and camera-conditioned latent diffusion teacher for the shapes world: Isotropic3D's view-conditioned
diffusion model (Liu et al. 2024, "Isotropic3D: Image-to-3D Generation Based on a Single CLIP Embedding",
arXiv:2403.10395; code github.com/pkunliu/Isotropic3D) in miniature, fine-tuned by gendistill from the shipped
`shapes-teacher`. Its only conditions are a reference image's CLIP image embedding (`{c.clip}`, one
cross-attention token through `encoder_hid_proj`) and the target view's camera (flattened 4x4 camera-to-world,
OpenCV axes, through the class-embedding MLP, `class_embed_type: projection`, as MVDream); the null condition of
classifier-free guidance is the zero embedding. `unet/` is a stock `UNet2DConditionModel` (float16 weights),
`vae/` and `scheduler/` are the base teacher's; `gendistill image-to-3d` runs SDS from it.

```python
from diffusers import UNet2DConditionModel
unet = UNet2DConditionModel.from_pretrained("<this folder>/unet")
eps_or_v = unet(latents, t, encoder_hidden_states=clip_embedding[:, None, :], class_labels=camtoworld.flatten(1)).sample
```

Simplified from the paper: stage 1 only (the text encoder swapped for the image encoder; single views, each
with its own camera); no stage 2 (Explicit Multi-view Attention with the noise-free reference) and no
multi-view attention: a shapes object is one primitive in one colour, which the embedding names.

## Training

- command: `{command}`
- data: {c.cache_size} renders (random object of 5 shapes x 8 colours, random camera); each step {c.batch_size}
  pairs of renders of one object from two cameras: the CLIP embedding of A (zeros with probability
  {c.cond_dropout}), the latent and camera of B; loss: the base teacher's v-prediction MSE on B
- {t[steps]} AdamW steps, lr {c.lr:g} on the pretrained weights and {c.new_lr:g} on the new modules (warm-up
  {c.warmup_steps}, decay to 10%), EMA {c.ema_decay} (exported); final training MSE {t[final_train_mse]}
- wall-clock: {minutes:.1f} min on one CPU thread (2 cores shared with other jobs); seed {c.seed}
- size: {size:.2f} MB

## Samples

For each of the 40 objects, a reference render from a random camera is embedded; the teacher draws the object
from two other random cameras (DDIM 25 steps, CFG {c.guidance_scale} against the zero embedding). The shapes
classifier scores each sample, and its non-white silhouette is compared with the analytic render at the asked
camera ({i.samples} samples; `samples.png`: references, truth, samples):

| condition | prompt acc | shape acc | colour acc | silhouette IoU |
|---|---|---|---|---|
| reference embedding | {i.prompt_accuracy:.3f} | {i.shape_accuracy:.3f} | {i.colour_accuracy:.3f} | {i.silhouette_iou:.3f} |
| zero embedding | {n.prompt_accuracy:.3f} | {n.shape_accuracy:.3f} | {n.colour_accuracy:.3f} | {n.silhouette_iou:.3f} |
"""
