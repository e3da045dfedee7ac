"""Benchmark: timings of the CUDA paths, median of a few runs after warm-up (``torch.cuda.synchronize`` around
every measurement).

    python benchmarks/cuda_timings.py [--counts 1000,10000,100000] [--size 256] [--cameras 4] [--warmup 2]
        [--repeats 5] [--budget 150] [--out benchmarks/results] [--device cuda]

- Gaussian rasterization: gsplat (``GaussianRenderer(backend="gsplat")``) against the pure-PyTorch reference
  (``backend="torch"``, i.e. ``render/rasterize_torch.py``), forward and forward + backward, at each count
  (gsplat rows are skipped when its CUDA kernels are not built: their JIT build takes minutes);
- one DMD2 trainer step (the sd15-dmd2 preset: its fake-score updates and one generator update) on the tiny
  SD pipeline of tests/tiny_pipelines.py in float32, bf16 and fp16 autocast, with peak GPU memory;
- one text-to-3D step (the default job: SDS with the shipped shapes teacher on Gaussians; gsplat renders
  when its kernels are built, else the pure-PyTorch renderer).

Writes cuda_timings.json and cuda_timings.md to --out. Without CUDA it says so and exits 0 without writing
anything. Each section records its error instead of stopping the others, and cases left when --budget
seconds have passed are recorded as skipped. ``--device cpu`` runs the same code on the CPU (a smoke test of
the script: gsplat and fp16 rows are skipped there); give it its own --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("no", "bf16", "fp16")


class Clock:
    """Wall-clock reads that wait for the device's queued work, and the run's time budget."""

    def __init__(self, device, budget_s: float):
        self.device, self.deadline = device, time.perf_counter() + budget_s

    def now(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def expired(self) -> bool:
        return time.perf_counter() > self.deadline

    def median_ms(self, fn: Callable[[], object], warmup: int, repeats: int) -> float:
        """Median wall-clock milliseconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = self.now()
            fn()
            times.append(self.now() - start)
        return 1000.0 * statistics.median(times)


def step_times_ms(stamps: list[float], warmup: int) -> float | None:
    """Median milliseconds between consecutive stamps (the run's start, then each step's end), leaving out
    the first ``warmup`` steps; None when no step is left."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return 1000.0 * statistics.median(gaps) if gaps else None


def error_row(err: BaseException) -> dict:
    traceback.print_exc()
    lines = str(err).strip().splitlines()
    return {"error": f"{type(err).__name__}: {lines[0] if lines else ''}"}


# --- rasterization ---------------------------------------------------------------------------------------


def random_gaussians(n: int, seed: int, device):
    """``n`` Gaussians in a ball of radius 0.9 with random colours and rotations, degree-3 SH, opacity 0.6 and
    scales that keep the covered area about constant across counts (no k-NN: it costs O(n^2) on the CPU)."""
    import torch

    from gendistill.render.gaussians import GaussianParams, rgb_to_sh0

    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = direction * 0.9 * torch.rand(n, 1, generator=g) ** (1 / 3)
    log_scales = torch.full((n, 3), math.log(0.04 * (1000 / n) ** 0.5)) + 0.2 * torch.randn(n, 3, generator=g)
    params = GaussianParams(means, log_scales, torch.randn(n, 4, generator=g), torch.full((n,), math.log(0.6 / 0.4)),
                            rgb_to_sh0(torch.rand(n, 3, generator=g)), 0.1 * torch.randn(n, 15, 3, generator=g))
    return params.to(device)


def gsplat_kernels_missing() -> str | None:
    """Why gsplat's CUDA kernels would need a JIT build (minutes, nvcc) on first use; None when they are
    prebuilt or were built before (the same check as tests/precision_runs.py; it starts no build)."""
    import importlib.util

    if importlib.util.find_spec("gsplat") is None:
        return "gsplat is not installed"
    if importlib.util.find_spec("gsplat.csrc") is not None:
        return None
    from torch.utils.cpp_extension import _get_build_directory

    if (Path(_get_build_directory("gsplat_cuda", verbose=False)) / "gsplat_cuda.so").is_file():
        return None
    return "gsplat CUDA kernels not built (GPU_CHECK_BUILD_GSPLAT=1 bash benchmarks/gpu_check.sh builds them)"


def time_rasterization(args, clock: Clock) -> list[dict]:
    """One row per (count, backend): forward and forward + backward milliseconds."""
    import torch

    from gendistill.render.rig import orbit

    cams = orbit(args.cameras, 20.0, width=args.size, height=args.size).to(clock.device)
    background = torch.ones(3, device=clock.device)
    rows = []
    for n in args.counts:
        params = random_gaussians(n, 0, clock.device)
        for backend in ("gsplat", "torch"):
            rows.append(raster_row(backend, params, cams, background, args, clock))
            print(_raster_line(rows[-1]), flush=True)
    return rows


def raster_row(backend: str, params, cams, background, args, clock: Clock) -> dict:
    """The timings of one backend on ``params`` (or why there are none)."""
    import torch

    from gendistill.render.gaussians import GaussianRenderer

    row = {"gaussians": len(params), "backend": backend, "cameras": args.cameras, "size": args.size}
    if clock.expired():
        return {**row, "skipped": "time budget"}
    if backend == "gsplat" and clock.device.type != "cuda":
        return {**row, "skipped": "gsplat needs CUDA"}
    if backend == "gsplat" and (missing := gsplat_kernels_missing()):
        return {**row, "skipped": missing}
    renderer = GaussianRenderer(backend=backend)

    def forward():
        with torch.no_grad():
            return renderer.render(params, cams, background)

    def forward_backward():
        out = renderer.render(params, cams, background)
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        params.zero_grad(set_to_none=True)

    try:
        row["forward_ms"] = clock.median_ms(forward, args.warmup, args.repeats)
        row["forward_backward_ms"] = clock.median_ms(forward_backward, args.warmup, args.repeats)
    except Exception as err:  # noqa: BLE001 - a missing gsplat build must not end the benchmark
        row.update(error_row(err))
    return row


# --- one DMD2 step ---------------------------------------------------------------------------------------


def distill_job():
    """The distill job's module (it is moving from gendistill.distill to gendistill.jobs.distill)."""
    import importlib

    for name in ("gendistill.jobs.distill.run", "gendistill.distill.run"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not name.startswith(err.name):
                raise
    raise ModuleNotFoundError("no distill job module")


def fresh_accelerate_state() -> None:
    """Let the next trainer's Accelerator take another mixed_precision (accelerate's state is process-wide)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def dmd2_step(precision: str, teacher_dir: Path, args, clock: Clock) -> dict:
    """Median milliseconds of one DMD2 trainer step in ``precision`` and the peak GPU memory of the run."""
    import torch

    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.config import load_config
    from gendistill.train.trainer import Trainer, step_generator

    job = distill_job()
    steps = args.warmup + args.repeats + 1
    config = load_config(job.DistillConfig, ROOT / "configs" / "distill" / "sd15-dmd2.yaml", [
        f"teacher={teacher_dir}", f"device={clock.device}", f"trainer.steps={steps}",
        f"trainer.mixed_precision={precision}", "trainer.checkpoint_every=0", "data.batch_size=2",
        f"data.prompts_file={teacher_dir.parent / 'prompts.txt'}"])
    teacher = TextToImageModel(load_pipeline(config.teacher, device=str(clock.device)))
    batches = job.make_batches(config, teacher)
    bound = config.recipe.build(teacher, lambda: batches(0, step_generator(config.trainer.seed, -1)))
    stamps: list[float] = []
    fresh_accelerate_state()
    if clock.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(clock.device)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(bound.recipe, config.trainer, out, batches, progress=False,
                          on_step=lambda step, row, losses: stamps.append(clock.now()))
        stamps.append(clock.now())
        trainer.fit()
    peak = torch.cuda.max_memory_allocated(clock.device) / 2**20 if clock.device.type == "cuda" else None
    return {"step_ms": step_times_ms(stamps, args.warmup), "fake_updates": config.recipe.fake_updates,
            "peak_mib": peak}


def time_dmd2(args, clock: Clock) -> list[dict]:
    """One row per precision: a DMD2 step on the tiny SD pipeline."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_pipelines import tiny_sd_pipeline

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        teacher_dir = Path(scratch) / "sd"
        tiny_sd_pipeline(teacher_dir, seed=0)
        (Path(scratch) / "prompts.txt").write_text("a red cube\na blue sphere\n")
        for precision in PRECISIONS:
            row = {"precision": precision}
            rows.append(row)
            if clock.expired():
                row["skipped"] = "time budget"
            elif precision == "fp16" and clock.device.type != "cuda":
                row["skipped"] = "fp16 autocast needs CUDA"
            else:
                try:
                    row.update(dmd2_step(precision, teacher_dir, args, clock))
                except Exception as err:  # noqa: BLE001
                    row.update(error_row(err))
            print(f"dmd2 {precision}: {_fmt(row.get('step_ms'))} ms/step {row.get('skipped', row.get('error', ''))}",
                  flush=True)
    fresh_accelerate_state()
    return rows


# --- one text-to-3D step ---------------------------------------------------------------------------------


def time_text_to_3d(args, clock: Clock) -> dict:
    """Median milliseconds of one step of the default text-to-3D job (and its Gaussian count), rendered by
    gsplat on CUDA when its kernels are built, else by the pure-PyTorch renderer."""
    from functools import partial

    import gendistill.render.scenes.gaussians as scenes
    from gendistill.jobs.text_to_3d.config import load_text3d_config
    from gendistill.jobs.text_to_3d.run import run_text_to_3d

    if clock.expired():
        return {"skipped": "time budget"}
    cuda_kernels = clock.device.type == "cuda" and gsplat_kernels_missing() is None
    backend = "gsplat" if cuda_kernels else "torch"
    steps = args.warmup + args.repeats + 1
    config = load_text3d_config(None, [f"device={clock.device}", f"iterations={steps}", "progress=false",
                                       "turntable.frames=4", *args.t3d_set])
    stamps: list[float] = []
    real_renderer = scenes.GaussianRenderer
    scenes.GaussianRenderer = partial(real_renderer, backend=backend)
    try:
        with tempfile.TemporaryDirectory() as out:
            stamps.append(clock.now())
            result = run_text_to_3d("a red sphere", config, out, progress=False,
                                    on_step=lambda step, images, loss: stamps.append(clock.now()))
        row = {"step_ms": step_times_ms(stamps, args.warmup), "model": config.model, "renderer": backend,
               "batch_size": config.batch_size, "gaussians": result.num_gaussians, "method": config.method.KIND}
    except Exception as err:  # noqa: BLE001
        row = {"renderer": backend, **error_row(err)}
    finally:
        scenes.GaussianRenderer = real_renderer
    print(f"text-to-3d ({backend}): {_fmt(row.get('step_ms'))} ms/step {row.get('error', '')}", flush=True)
    return row


# --- report ----------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def _note(row: dict) -> str:
    return row.get("skipped") or row.get("error") or ""


def _raster_line(row: dict) -> str:
    return table_row([row["gaussians"], row["backend"], row.get("forward_ms"), row.get("forward_backward_ms"),
                      _note(row)])


def table_row(cells: list) -> str:
    return "| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in cells) + " |"


def table(header: list[str], rows: list[list]) -> list[str]:
    return [table_row(header), "|" + "---|" * len(header), *(table_row(r) for r in rows)]


def markdown(results: dict) -> str:
    """The three tables of cuda_timings.md."""
    env, t3d = results["environment"], results["text_to_3d_step"]
    lines = ["### CUDA timings", "", f"{env['device_name']}, torch {env['torch']}, gsplat {env['gsplat']}; median of "
             f"{env['repeats']} runs after {env['warmup']} warm-up runs, synchronised. {env['written']}.", "",
             f"Gaussian rasterization, {env['cameras']} cameras at {env['size']}x{env['size']} (ms):", "",
             *table(["Gaussians", "backend", "forward", "forward + backward", "note"], []),
             *(_raster_line(row) for row in results["rasterization"]),
             "", "One DMD2 trainer step (sd15-dmd2 preset, tiny SD pipeline, batch 2):", "",
             *table(["precision", "ms / step", "fake-score updates", "peak MiB", "note"],
                    [[r["precision"], r.get("step_ms"), r.get("fake_updates"), r.get("peak_mib"), _note(r)]
                     for r in results["dmd2_step"]]),
             "", "One text-to-3D step (default job):", "",
             *table(["model", "method", "renderer", "batch", "Gaussians", "ms / step", "note"],
                    [[t3d.get(k) for k in ("model", "method", "renderer", "batch_size", "gaussians", "step_ms")]
                     + [_note(t3d)]])]
    return "\n".join(lines) + "\n"


def environment(args, device) -> dict:
    import torch

    try:
        import gsplat
        gsplat_version = gsplat.__version__
    except Exception as err:  # noqa: BLE001
        gsplat_version = f"not importable ({type(err).__name__})"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda, "gsplat": gsplat_version,
            "warmup": args.warmup, "repeats": args.repeats, "cameras": args.cameras, "size": args.size,
            "written": time.strftime("%Y-%m-%d %H:%M:%S")}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000, 100000])
    parser.add_argument("--size", type=int, default=256, help="render width and height")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=150.0, help="seconds after which cases left are skipped")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of this script")
    parser.add_argument("--t3d-set", action="append", default=[], help="override of the text-to-3D config")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from gendistill.compat import prepare_process

    prepare_process()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"cuda_timings: CUDA is not available (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}); nothing timed, nothing written.")
        return 0
    device = torch.device(args.device)
    clock = Clock(device, args.budget)
    results = {"environment": environment(args, device)}
    print(f"cuda_timings on {results['environment']['device_name']}", flush=True)
    results["rasterization"] = time_rasterization(args, clock)
    results["dmd2_step"] = time_dmd2(args, clock)
    results["text_to_3d_step"] = time_text_to_3d(args, clock)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_timings.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "cuda_timings.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'cuda_timings.json'} and {out / 'cuda_timings.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
