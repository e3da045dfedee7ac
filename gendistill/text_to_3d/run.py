"""``gendistill text-to-3d``: optimise 3D Gaussians so that a text-to-image model likes every view of them.

Each step draws ``batch_size`` cameras on the sphere around the origin, renders the Gaussians from them,
asks the score-distillation guidance (SDS, VSD, CSD or NPG, ``gendistill.score``) for its gradient on the
renders under view-dependent prompts ("a red sphere, side view"), and takes an Adam step per parameter group;
gsplat's densification and the prune-only phase (``densify.py``) grow and prune the Gaussians, and VSD's
fake score takes its own step on the renders.

The output folder gets ``scene.ply`` (the standard 3DGS layout, for any splat viewer), ``turntable.gif``
(and ``.mp4`` when imageio-ffmpeg is installed), ``heldout.png`` (the 8 evaluation views, over the analytic
object when the prompt is a shapes caption), ``metrics.json``, ``eval3d.json`` (shapes captions),
``curves.png`` and ``config.yaml`` (the resolved config, which ``gendistill eval-3d`` reads back).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import save_config
from gendistill.domains.shapes import (Camera, caption, parse_caption, render_batch, sample_cameras, stack_cameras,
                                       view_phrase)
from gendistill.errors import RunStopped, UserError, check_range
from gendistill.render.cameras import Cameras
from gendistill.render.gaussians import (GaussianParams, GaussianRenderer, init_from_points,
                                         init_from_sphere, rgb_to_sh0)
from gendistill.render.images import make_grid, save_png
from gendistill.render.plots import plot_curves
from gendistill.render.ply import load_ply, save_ply
from gendistill.score.guidance import guidance_from_model
from gendistill.text_to_3d.config import REPRESENTATIONS, Text3DConfig
from gendistill.text_to_3d.densify import Densifier
from gendistill.text_to_3d.evaluate3d import Eval3DResult, evaluate_gaussians, heldout_cameras, load_default_classifier
from gendistill.text_to_3d.turntable import render_turntable, save_turntable

OnStep = Callable[[int, Tensor, float], None]
"""``on_step(step, images, loss)``: the step's renders (B, 3, H, W) in [0, 1] (detached) and its loss."""
MAX_BAD_STEPS = 10
"""A run stops after this many non-finite steps in a row (each is skipped)."""


@dataclass(frozen=True)
class Text3DResult:
    """What a text-to-3D run wrote and measured."""

    out_dir: Path
    """The output folder."""
    params: GaussianParams
    """The final Gaussians (what ``ply`` holds)."""
    ply: Path
    """The Gaussians, 3DGS PLY layout."""
    turntable: list[Path]
    """The turntable GIF (and MP4)."""
    num_gaussians: int
    """Gaussians in the final scene."""
    seconds: float
    """Wall-clock of the optimisation loop."""
    final_loss: float
    """Mean loss (guidance surrogate plus regulariser) over the last 10% of steps."""
    skipped_steps: int
    """Steps skipped by the NaN guard."""
    evaluation: Eval3DResult | None
    """Held-out metrics (shapes captions only)."""


# --- pieces -----------------------------------------------------------------------------------------


def validate(prompt: str, config: Text3DConfig) -> None:
    """Every user error that needs no model, before any work."""
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty; describe the object, e.g. 'a red sphere'")
    if config.representation not in REPRESENTATIONS:
        later = " ('nerf' comes in a later release)" if config.representation == "nerf" else ""
        raise UserError(f"unknown representation {config.representation!r}{later}; choose one of: "
                        f"{', '.join(REPRESENTATIONS)}")
    check_range("iterations", config.iterations, 1)
    check_range("batch_size", config.batch_size, 1)
    check_range("scene_radius", config.scene_radius, 1e-6)
    check_range("turntable.frames", config.turntable.frames, 1)
    check_range("turntable.size", config.turntable.size, 8)
    check_range("init.num_points", config.init.num_points, 1)
    check_range("optim.grad_blur_px", config.optim.grad_blur_px, 0.0)
    check_range("optim.tv_weight", config.optim.tv_weight, 0.0)
    if config.resolution is not None:
        check_range("resolution", config.resolution, 8)
    check_range("cameras.distance", config.cameras.distance, 1.0001)
    check_range("cameras.fov_deg", config.cameras.fov_deg, 1.0, 170.0)
    lo, hi = config.cameras.elevation_range_deg
    check_range("cameras.elevation_range_deg[0]", lo, -89.0, 89.0)
    check_range("cameras.elevation_range_deg[1]", hi, lo, 89.0)
    if config.method.KIND == "vsd" and config.method.camera_dim not in (0, 16):
        raise UserError(f"vsd.camera_dim must be 16 (text-to-3d feeds 4x4 camera-to-world matrices) or 0, "
                        f"got {config.method.camera_dim}")
    if config.init.ply is not None and not Path(config.init.ply).is_file():
        raise UserError(f"init.ply {config.init.ply!r} does not exist")


def view_prompt(prompt: str, camera: Camera | None) -> str:
    """The prompt for one view, with the caption template: a shapes caption is rebuilt by ``caption(scene,
    camera)``; any other prompt gets ", <view phrase>" appended. ``camera=None``: no view phrase."""
    try:
        scene = parse_caption(prompt)
    except UserError:
        return prompt.strip() if camera is None else f"{prompt.strip()}, {view_phrase(camera)}"
    return caption(scene, camera)


def training_cameras(config: Text3DConfig, n: int, generator: torch.Generator, size: tuple[int, int]) -> list[Camera]:
    """``n`` cameras with uniform azimuth and elevation in the configured range."""
    c = config.cameras
    drawn = sample_cameras(n, generator, elevation_range_deg=tuple(c.elevation_range_deg), width=size[1],
                           height=size[0])
    return [dataclasses.replace(cam, distance=c.distance, fov_deg=c.fov_deg) for cam in drawn]


def camera_features(cameras: list[Camera]) -> Tensor:
    """Flattened 4x4 camera-to-world matrices, (B, 16): what VSD's camera-conditioned fake score reads."""
    return torch.stack([cam.camtoworld.flatten() for cam in cameras])


def _point_cloud(path: Path) -> tuple[Tensor, Tensor]:
    """Points (N, 3) and colours (N, 3) in [0, 1] of a binary PLY point cloud (grey when it has none)."""
    import numpy as np

    from gendistill.render.ply import _vertex_dtype  # the header reader of render/ply.py

    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    dtype, count = _vertex_dtype(raw[:end].decode("ascii", errors="replace").splitlines(), path)
    v = np.frombuffer(raw[end + len(b"end_header\n"):], dtype=dtype, count=count)
    names = set(v.dtype.names)
    if not {"x", "y", "z"} <= names:
        raise UserError(f"{path} is neither a 3DGS file nor a point cloud (no x, y, z vertex properties)")
    points = torch.from_numpy(np.stack([v[k].astype(np.float32) for k in "xyz"], axis=1))
    if {"red", "green", "blue"} <= names:
        rgb = np.stack([v[k].astype(np.float32) for k in ("red", "green", "blue")], axis=1)
        colours = torch.from_numpy(rgb / (255.0 if rgb.max() > 1 else 1.0))
    else:
        colours = torch.full_like(points, 0.5)
    return points, colours


def initial_gaussians(config: Text3DConfig, generator: torch.Generator) -> GaussianParams:
    """Gaussians in a ball (DreamGaussian's start), or those of ``init.ply`` (3DGS file or point cloud)."""
    c = config.init
    if c.ply is None:
        check_range("init.radius", c.radius, 1e-6)
        check_range("init.colour_jitter", c.colour_jitter, 0.0, 0.5)
        params = init_from_sphere(c.num_points, c.radius, generator, sh_degree=c.sh_degree, opacity=c.opacity)
        colours = 0.5 + c.colour_jitter * (2 * torch.rand(c.num_points, 3, generator=generator) - 1)
        with torch.no_grad():
            params.sh0.copy_(rgb_to_sh0(colours))
        return params
    try:
        return load_ply(c.ply)
    except UserError as err:
        if "missing vertex properties" not in str(err):
            raise
    points, colours = _point_cloud(Path(c.ply))
    return init_from_points(points, colours, sh_degree=c.sh_degree, opacity=c.opacity)


def make_optimizers(params: GaussianParams, config: Text3DConfig) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter group (gsplat's strategies need that), keyed by group name; the means' rate is
    scaled by the scene radius, as parameter_groups does."""
    optimizers = {}
    for group in params.parameter_groups(config.scene_radius):
        torch_group = {**group.as_torch(), "lr": getattr(config.optim.lr, group.name) * (
            config.scene_radius if group.name == "means" else 1.0)}
        optimizers[group.name] = torch.optim.Adam([torch_group], betas=tuple(config.optim.betas), eps=1e-15)
    return optimizers


def decayed_lr(config: Text3DConfig, name: str, base: float, step: int) -> float:
    """Exponential decay from ``base`` to ``base * optim.means_lr_final`` (means) or ``base * optim.lr_final``
    (the other groups) over the run."""
    final = config.optim.means_lr_final if name == "means" else config.optim.lr_final
    return base * final ** (step / max(1, config.iterations - 1))


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W) with std ``sigma`` pixels (radius 3 sigma), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def surface_total_variation(rgb: Tensor, alpha: Tensor, background: Tensor) -> Tensor:
    """Total variation of the Gaussians' own colour, not of the silhouette: the renders (B, 3, H, W) are
    un-blended from the background, ``(rgb - (1 - alpha) bg) / alpha``, and the absolute differences of
    vertical and horizontal neighbours are weighted by both pixels' (detached) alpha, then averaged."""
    a = alpha.detach()
    colour = (rgb - (1 - alpha) * background.view(1, -1, 1, 1)) / alpha.clamp_min(1e-3)
    dy = (colour[..., 1:, :] - colour[..., :-1, :]).abs() * (a[..., 1:, :] * a[..., :-1, :])
    dx = (colour[..., :, 1:] - colour[..., :, :-1]).abs() * (a[..., :, 1:] * a[..., :, :-1])
    return dy.mean() + dx.mean()


def pick_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


# --- the loop ---------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything the loop mutates."""

    config: Text3DConfig
    prompt: str
    guidance: object
    params: GaussianParams
    optimizers: dict[str, torch.optim.Optimizer]
    densifier: Densifier
    fake_optimizer: torch.optim.Optimizer | None
    size: tuple[int, int]
    background: Tensor
    cameras_gen: torch.Generator
    noise_gen: torch.Generator
    base_lrs: dict[str, float]
    renderer: GaussianRenderer = dataclasses.field(default_factory=GaussianRenderer)
    history: list[dict] = dataclasses.field(default_factory=list)
    skipped: int = 0
    bad_in_a_row: int = 0


def _setup(prompt: str, config: Text3DConfig) -> _Run:
    device = pick_device(config.device)
    model = TextToImageModel(load_pipeline(config.model, device=str(device)))
    guidance = guidance_from_model(model, config.method.KIND, config.method)
    size = model.image_size() if config.resolution is None else (config.resolution, config.resolution)
    cameras_gen = torch.Generator().manual_seed(config.seed)
    params = initial_gaussians(config, cameras_gen).to(device)
    optimizers = make_optimizers(params, config)
    densifier = Densifier(config.densify, params, optimizers, config.scene_radius, config.iterations)
    fake_optimizer = None
    if config.method.KIND == "vsd":
        fake_optimizer = torch.optim.Adam(guidance.fake_parameters(), lr=config.optim.fake_score_lr)
    noise_gen = torch.Generator(device).manual_seed(config.seed + 1)
    return _Run(config, prompt, guidance, params, optimizers, densifier, fake_optimizer, size,
                torch.tensor(config.background, device=device), cameras_gen, noise_gen,
                {name: opt.param_groups[0]["lr"] for name, opt in optimizers.items()})


def _gradients_finite(run: _Run, loss: Tensor) -> bool:
    if not torch.isfinite(loss):
        return False
    return all(p.grad is None or torch.isfinite(p.grad).all() for p in run.params.splats.values())


def _train_step(run: _Run, step: int) -> tuple[dict, Tensor] | None:
    """One optimisation step; returns its log row and renders, or None when the NaN guard skipped it."""
    c = run.config
    cams = training_cameras(c, c.batch_size, run.cameras_gen, run.size)
    prompts = [view_prompt(run.prompt, cam if c.cameras.view_dependent_prompts else None) for cam in cams]
    features = camera_features(cams).to(run.background.device) if c.method.KIND == "vsd" else None
    cameras = Cameras.from_batch(stack_cameras(cams))
    render = run.renderer.render(run.params, cameras, run.background)
    if c.optim.grad_blur_px > 0:
        render.rgb.register_hook(lambda grad: gaussian_blur(grad, c.optim.grad_blur_px))
    run.densifier.before_backward(step, render, cameras)
    out = run.guidance.gradient(render.rgb, prompts, step, c.iterations, run.noise_gen, features)
    for opt in run.optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss = out.loss
    if c.optim.tv_weight > 0:
        loss = loss + c.optim.tv_weight * surface_total_variation(render.rgb, render.alpha, run.background)
    loss.backward()
    if not _gradients_finite(run, loss):
        run.skipped, run.bad_in_a_row = run.skipped + 1, run.bad_in_a_row + 1
        return None
    run.bad_in_a_row = 0
    for name, opt in run.optimizers.items():
        opt.param_groups[0]["lr"] = decayed_lr(c, name, run.base_lrs[name], step)
        if c.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.params.splats[name], c.optim.grad_clip)
        opt.step()
    event = run.densifier.after_backward(step, render, cameras)
    row = {"step": step, "loss": loss.item(), "grad_norm": out.terms["grad_norm"], "t": out.terms["t"],
           "gaussians": event.after}
    if run.fake_optimizer is not None:
        fake = run.guidance.fake_score_step(render.rgb.detach(), prompts, features, run.noise_gen)
        run.fake_optimizer.zero_grad(set_to_none=True)
        fake.total.backward()
        run.fake_optimizer.step()
        row["fake_denoise"] = fake.terms["fake_denoise"]
    return row, render.rgb.detach()


def _loop(run: _Run, progress: bool, on_step: OnStep | None) -> float:
    from tqdm.auto import tqdm

    c = run.config
    start = time.perf_counter()
    bar = tqdm(total=c.iterations, desc="text-to-3d", disable=not progress)
    try:
        for step in range(c.iterations):
            outcome = _train_step(run, step)
            bar.update(1)
            if outcome is None:
                if run.bad_in_a_row >= MAX_BAD_STEPS:
                    break
                continue
            row, images = outcome
            run.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", gaussians=row["gaussians"], refresh=False)
            if on_step is not None:
                on_step(step, images, row["loss"])
    finally:
        bar.close()
    return time.perf_counter() - start


# --- outputs ----------------------------------------------------------------------------------------


@torch.no_grad()
def _heldout_grid(run: _Run, out_dir: Path, evaluated: Tensor | None) -> Path:
    """The 8 held-out views (over the analytic object when the prompt is a shapes caption)."""
    cams = heldout_cameras()
    renders = evaluated
    if renders is None:
        renders = run.renderer.render(run.params, Cameras.from_batch(stack_cameras(cams)), run.background).rgb.cpu()
    rows = [renders.clamp(0, 1)]
    try:
        rows.append(render_batch([parse_caption(run.prompt)] * len(cams), cams).rgb)
    except UserError:
        pass
    return save_png(make_grid(torch.cat(rows), columns=len(cams)), out_dir / "heldout.png")


def _evaluate(run: _Run) -> tuple[Eval3DResult | None, Tensor | None]:
    try:
        parse_caption(run.prompt)
    except UserError:
        return None, None
    return evaluate_gaussians(run.params, run.prompt, load_default_classifier(), run.config.background, run.renderer)


def _write_outputs(run: _Run, out_dir: Path, seconds: float) -> Text3DResult:
    c = run.config
    ply = save_ply(run.params, out_dir / "scene.ply")
    tt = c.turntable
    frames = render_turntable(run.params, tt.frames, tt.elevation_deg, tt.size, c.background, c.cameras.distance,
                              c.cameras.fov_deg, run.renderer)
    turntable = save_turntable(frames, out_dir, tt.fps)
    evaluation, renders = _evaluate(run)
    if evaluation is not None:
        (out_dir / "eval3d.json").write_text(json.dumps(evaluation.as_dict(), indent=2))
    _heldout_grid(run, out_dir, renders)
    plot_curves(run.history, out_dir / "curves.png", title=f"{c.method.KIND}: {run.prompt}")
    tail = [row["loss"] for row in run.history[-max(1, len(run.history) // 10):]]
    final_loss = sum(tail) / len(tail) if tail else math.nan
    metrics = {"prompt": run.prompt, "method": c.method.KIND, "representation": c.representation,
               "model": c.model, "steps": len(run.history) + run.skipped, "skipped_steps": run.skipped,
               "seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(1, len(run.history)), 4),
               "num_gaussians": len(run.params), "final_loss": final_loss,
               "eval3d": None if evaluation is None else evaluation.as_dict(),
               "outputs": sorted(p.name for p in [ply, *turntable]) + ["heldout.png", "curves.png", "config.yaml"]}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return Text3DResult(out_dir, run.params, ply, turntable, len(run.params), seconds, final_loss, run.skipped,
                        evaluation)


def run_text_to_3d(prompt: str, config: Text3DConfig, out_dir: str | Path, progress: bool = True,
                   on_step: OnStep | None = None) -> Text3DResult:
    """Optimise Gaussians for ``prompt`` (it replaces ``config.prompt``) and write every output to ``out_dir``.

    ``progress`` and ``config.progress`` must both be on for the progress bar. Raises RunStopped (after
    writing the outputs of the last good step) when the loss stays non-finite for MAX_BAD_STEPS steps."""
    validate(prompt, config)
    config = dataclasses.replace(config, prompt=prompt.strip())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    run = _setup(config.prompt, config)
    seconds = _loop(run, progress and config.progress, on_step)
    result = _write_outputs(run, out_dir, seconds)
    if run.bad_in_a_row >= MAX_BAD_STEPS:
        raise RunStopped(f"the loss was not finite for {MAX_BAD_STEPS} steps in a row (step "
                         f"{len(run.history) + run.skipped}); the last good scene is in {result.ply}")
    return result
