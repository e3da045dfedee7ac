"""``gendistill text-to-3d``: optimise a 3D scene so that a text-to-image model likes every view of it.

Each step draws ``batch_size`` cameras on the sphere around the origin, renders the scene from them (3D
Gaussians or a NeRF, see ``representations.py``), asks the score-distillation guidance (SDS, VSD, CSD or NPG,
``gendistill.score``) for its gradient on the renders under view-dependent prompts ("a red sphere, side
view"), and lets the scene take its optimiser step (Gaussians then densify and prune); VSD's fake score takes
its own step on the renders.

The output folder (``outputs.py``) gets the scene (``scene.ply`` in the 3DGS layout for Gaussians; for a NeRF
``field.safetensors`` and a marching-cubes mesh ``scene_mesh.ply``/``.obj``/``.glb``), ``turntable.gif`` (and
``.mp4`` when imageio-ffmpeg is installed), ``heldout.png``, ``metrics.json``, ``eval3d.json`` (shapes
captions), ``curves.png`` and ``config.yaml`` (the resolved config, which ``gendistill eval-3d`` reads back).
A run that is stopped (an exception from ``on_step``, e.g. the demo's Stop), interrupted (Ctrl-C) or crashes
writes them too, from the last state, with ``"stopped": true`` in metrics.json, then re-raises.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from gendistill.backends.loading import load_pipeline
from gendistill.backends.text_to_image import TextToImageModel
from gendistill.config import save_config
from gendistill.devices import pick_device
from gendistill.errors import RunStopped, UserError, check_range
from gendistill.render.cameras import stack_cameras
from gendistill.score.guidance import guidance_from_model
from gendistill.text_to_3d.config import Text3DConfig
from gendistill.text_to_3d.gaussian_scene import initial_gaussians  # noqa: F401 - part of this module's API
from gendistill.text_to_3d.outputs import Text3DResult, write_outputs
from gendistill.text_to_3d.regularisers import gaussian_blur, surface_total_variation
from gendistill.text_to_3d.representations import Scene3D, check_representation, create_scene
from gendistill.text_to_3d.views import camera_features, check_view_prompts, training_cameras, training_prompts

__all__ = ["Text3DResult", "gaussian_blur", "initial_gaussians", "run_text_to_3d", "validate"]

OnStep = Callable[[int, Tensor, float], None]
"""``on_step(step, images, loss)``: the step's renders (B, 3, H, W) in [0, 1] (detached) and its loss. An
exception it raises stops the run (after the outputs are written) and propagates."""
MAX_BAD_STEPS = 10
"""A run stops after this many non-finite steps in a row (each is skipped)."""


def validate(prompt: str, config: Text3DConfig) -> None:
    """Every user error that needs no model, before any work."""
    if not prompt or not prompt.strip():
        raise UserError("the prompt is empty; describe the object, e.g. 'a red sphere'")
    check_representation(config.representation)
    for name in ("iterations", "batch_size", "turntable.frames", "init.num_points", "nerf.num_samples",
                 "nerf.eval_samples", "nerf.chunk", "nerf.mesh.resolution"):
        check_range(name, _get(config, name), 1)
    for name in ("optim.grad_blur_px", "optim.tv_weight", "nerf.num_importance", "nerf.density_blob",
                 "nerf.opacity_weight", "nerf.mesh.density_threshold"):
        check_range(name, _get(config, name), 0.0)
    check_range("scene_radius", config.scene_radius, 1e-6)
    check_range("nerf.blob_radius", config.nerf.blob_radius, 1e-6)
    check_range("nerf.blob_fraction", config.nerf.blob_fraction, 0.0, 1.0)
    check_range("nerf.initial_density", config.nerf.initial_density, 1e-8)
    check_range("turntable.size", config.turntable.size, 8)
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
    check_view_prompts(prompt, config)


def _get(config, dotted: str):
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


# --- the loop ---------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything the loop mutates."""

    config: Text3DConfig
    guidance: object
    scene: Scene3D
    fake_optimizer: torch.optim.Optimizer | None
    size: tuple[int, int]
    background: Tensor
    cameras_gen: torch.Generator
    noise_gen: torch.Generator
    history: list[dict] = dataclasses.field(default_factory=list)
    skipped: int = 0
    bad_in_a_row: int = 0


def _setup(config: Text3DConfig) -> _Run:
    device = pick_device(config.device)
    model = TextToImageModel(load_pipeline(config.model, device=str(device)))
    guidance = guidance_from_model(model, config.method.KIND, config.method)
    size = model.image_size() if config.resolution is None else (config.resolution, config.resolution)
    cameras_gen = torch.Generator().manual_seed(config.seed)
    scene = create_scene(config, cameras_gen, device)
    fake_optimizer = None
    if config.method.KIND == "vsd":
        fake_optimizer = torch.optim.Adam(guidance.fake_parameters(), lr=config.optim.fake_score_lr)
    return _Run(config, guidance, scene, fake_optimizer, size, torch.tensor(config.background, device=device),
                cameras_gen, torch.Generator(device).manual_seed(config.seed + 1))


def _train_step(run: _Run, step: int) -> tuple[dict, Tensor] | None:
    """One optimisation step; returns its log row and renders, or None when the NaN guard skipped it."""
    c = run.config
    cams = training_cameras(c, c.batch_size, run.cameras_gen, run.size)
    prompts = training_prompts(c, cams)
    features = camera_features(cams).to(run.background.device) if c.method.KIND == "vsd" else None
    cameras = stack_cameras(cams)
    render = run.scene.render(cameras, run.background)
    if c.optim.grad_blur_px > 0:
        render.rgb.register_hook(lambda grad: gaussian_blur(grad, c.optim.grad_blur_px))
    run.scene.before_backward(step, render, cameras)
    out = run.guidance.gradient(render.rgb, prompts, step, c.iterations, run.noise_gen, features)
    run.scene.zero_grad()
    loss = out.loss
    if c.optim.tv_weight > 0:
        loss = loss + c.optim.tv_weight * surface_total_variation(render.rgb, render.alpha, run.background)
    if c.representation == "nerf" and c.nerf.opacity_weight > 0:
        loss = loss + c.nerf.opacity_weight * render.alpha.mean()
    loss.backward()
    if not (torch.isfinite(loss) and run.scene.gradients_finite()):
        run.skipped, run.bad_in_a_row = run.skipped + 1, run.bad_in_a_row + 1
        return None
    run.bad_in_a_row = 0
    logged = run.scene.step(step, render, cameras)
    row = {"step": step, "loss": loss.item(), "grad_norm": out.terms["grad_norm"], "t": out.terms["t"], **logged}
    if run.fake_optimizer is not None:
        row["fake_denoise"] = _fake_score_step(run, render.rgb.detach(), prompts, features)
    return row, render.rgb.detach()


def _fake_score_step(run: _Run, images: Tensor, prompts: list[str], features: Tensor | None) -> float:
    """VSD: one step of the LoRA fake score on the current renders."""
    fake = run.guidance.fake_score_step(images, prompts, features, run.noise_gen)
    run.fake_optimizer.zero_grad(set_to_none=True)
    fake.total.backward()
    run.fake_optimizer.step()
    return fake.terms["fake_denoise"]


def _loop(run: _Run, progress: bool, on_step: OnStep | None) -> tuple[float, BaseException | None]:
    """Run the steps; returns the wall-clock and what ended the run early (None: it ran every step). An
    exception (from ``on_step``, Ctrl-C or a crash) ends the loop and is returned, not raised, so that the
    outputs of the last state get written first."""
    from tqdm.auto import tqdm

    c = run.config
    start = time.perf_counter()
    bar = tqdm(total=c.iterations, desc=f"text-to-3d ({c.representation})", disable=not progress)
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
            bar.set_postfix({k: v for k, v in (("loss", f"{row['loss']:.4g}"), ("gaussians", row.get("gaussians")))
                             if v is not None}, refresh=False)
            if on_step is not None:
                on_step(step, images, row["loss"])
    except BaseException as err:  # noqa: BLE001 - re-raised by run_text_to_3d once the outputs are written
        return time.perf_counter() - start, err
    finally:
        bar.close()
    return time.perf_counter() - start, None


def _stop_reason(run: _Run, interruption: BaseException | None) -> str | None:
    if interruption is not None:
        return "interrupted" if isinstance(interruption, KeyboardInterrupt) else type(interruption).__name__
    return "non-finite loss" if run.bad_in_a_row >= MAX_BAD_STEPS else None


def run_text_to_3d(prompt: str, config: Text3DConfig, out_dir: str | Path, progress: bool = True,
                   on_step: OnStep | None = None) -> Text3DResult:
    """Optimise a scene for ``prompt`` (it replaces ``config.prompt``) and write every output to ``out_dir``.

    ``progress`` and ``config.progress`` must both be on for the progress bar. Raises RunStopped (after
    writing the outputs of the last good step) when the loss stays non-finite for MAX_BAD_STEPS steps; an
    exception raised inside the loop (``on_step``, KeyboardInterrupt) is re-raised after the outputs of the
    state it stopped at are written."""
    validate(prompt, config)
    config = dataclasses.replace(config, prompt=prompt.strip())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    # gsplat's densification and VSD's LoRA draw from the global RNG: seed it for this run only
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(config.seed)
        run = _setup(config)
        seconds, interruption = _loop(run, progress and config.progress, on_step)
    try:
        result = write_outputs(config, run.scene, run.history, run.skipped, seconds, out_dir,
                               _stop_reason(run, interruption))
    except Exception as err:
        if interruption is not None:
            raise interruption from err
        raise
    if interruption is not None:
        raise interruption
    if run.bad_in_a_row >= MAX_BAD_STEPS:
        raise RunStopped(f"the loss was not finite for {MAX_BAD_STEPS} steps in a row (step "
                         f"{result.steps}); the last good scene is in {result.ply}")
    return result
