"""Job runs of the mixed-precision tests on tiny components, shared by the CUDA tests (tests/gpu) and the
CPU bf16 ones (tests/train): each runs a real job with a :class:`TrainerSpy` on its trainer."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch

from gendistill.config import load_config
from precision_spy import TrainerSpy
from tiny_pipelines import fit_recipe_to_tiny_teacher, tiny_teacher_kind

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "distill").glob("*.yaml"))
STEPS = {"fp16": 3, "bf16": 2}
"""Trainer steps per run: fp16 gets one more, as its gradient scaler may skip a first update that overflows."""
UNET_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"
T3D_SMALL = ["iterations=2", "batch_size=2", "scene.init.num_points=150", "turntable.size=24", "turntable.frames=4",
             "progress=false", "cameras.view_prompts=shapes"]


def gsplat_kernels_missing() -> str | None:
    """Why gsplat's CUDA kernels would need a JIT build (minutes, nvcc) on first use; None when they are
    prebuilt or were built before. Asking starts no build (it may make torch's empty build folder, as
    gsplat's own first use would)."""
    import importlib.util

    if importlib.util.find_spec("gsplat") is None:
        return "gsplat is not installed"
    if importlib.util.find_spec("gsplat.csrc") is not None:
        return None
    from torch.utils.cpp_extension import _get_build_directory

    build = Path(_get_build_directory("gsplat_cuda", verbose=False))
    if (build / "gsplat_cuda.so").is_file():
        return None
    return (f"gsplat has no prebuilt CUDA kernels and none are built in {build} (a JIT build takes minutes; "
            "GPU_CHECK_BUILD_GSPLAT=1 bash benchmarks/gpu_check.sh builds them first)")


def teacher_dir(preset: Path, root: Path) -> Path:
    """The tiny teacher of ``make_tiny_teachers`` that a preset distils (SDXL, SD3 or SD)."""
    return root / tiny_teacher_kind(preset)


def distill(preset: Path, precision: str, device: str, root: Path, out: Path, monkeypatch, *extra: str):
    """Run the distill job on ``preset`` with the tiny components of ``root`` in ``precision``; (result, spy)."""
    job = importlib.import_module("gendistill.jobs.distill.run")
    overrides = [f"teacher={teacher_dir(preset, root)}", f"device={device}", f"trainer.steps={STEPS[precision]}",
                 f"trainer.mixed_precision={precision}", "trainer.checkpoint_every=0", "trainer.eval_every=0",
                 "data.batch_size=2", f"data.prompts_file={root / 'prompts.txt'}",
                 f"data.image_folder={root / 'images'}", "eval.during_training_samples=0", "eval.num_samples=2",
                 "eval.teacher_steps=[2]", "eval.student_steps=[1]", "eval.grid_prompts=2", *extra]
    config = load_config(job.DistillConfig, preset, overrides)
    fit_recipe_to_tiny_teacher(config)
    spy = TrainerSpy(job.Trainer).install(monkeypatch, job)
    return job.run_distill(config, out, progress=False), spy


def text_to_3d(precision: str, device: str, model: Path, out: Path, monkeypatch, backend: str = "auto",
               *extra: str):
    """Two text-to-3D iterations on Gaussians in ``precision`` (the job has no precision key: the spy sets
    it on the job's trainer) rendered by ``backend`` (gsplat, torch or auto), plus ``extra`` overrides;
    (result, spy)."""
    from functools import partial

    import gendistill.render.scenes.gaussians as scenes
    from gendistill.jobs.text_to_3d.config import load_text3d_config

    job = importlib.import_module("gendistill.jobs.text_to_3d.run")
    monkeypatch.setattr(scenes, "GaussianRenderer", partial(scenes.GaussianRenderer, backend=backend))
    spy = TrainerSpy(job.Trainer, precision).install(monkeypatch, job)
    config = load_text3d_config(None, [f"model={model}", f"device={device}", *T3D_SMALL, *extra])
    return job.run_text_to_3d("a red sphere", config, out, progress=False), spy


def assert_samples(pipeline: Path, device: str, dtype: torch.dtype) -> None:
    """The folder loads in stock diffusers and samples finite images in ``dtype`` on ``device``."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(pipeline, torch_dtype=dtype, trust_remote_code=True).to(device)
    network = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet  # flow-map students: pipeline.py
    assert type(network).__name__ in ("UNet2DConditionModel", "SD3Transformer2DModel")
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red cube", num_inference_steps=1, guidance_scale=1.0, output_type="np",
                  generator=torch.Generator(device).manual_seed(0)).images
    assert images.shape[0] == 1 and np.isfinite(images).all()


def assert_scene_written(result, out: Path) -> None:
    """The text-to-3D run wrote a PLY of its Gaussians and metrics of a run that was not stopped."""
    from gendistill.render.ply import load_ply

    assert len(load_ply(out / "scene.ply")) == result.num_gaussians > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] is False and metrics["steps"] == 2
