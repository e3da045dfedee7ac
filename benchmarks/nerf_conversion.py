"""Benchmark: progressive volume distillation (convert-nerf) against training the same student from scratch.

    OMP_NUM_THREADS=1 /tmp/nsvenv/bin/python benchmarks/nerf_conversion.py [--caption "a red cube"]
        [--resolution 32] [--teacher-steps 800] [--convert-steps 400] [--scratch-cap-s 180] [--out benchmarks/results]

A hashgrid teacher is fitted to shapes renders of the caption (40 views; 8 held-out views are the ground
truth). For each student (mlp, tensorf-vm, tensorf-cp, gaussians) it measures, on the held-out views: the
teacher's PSNR, the student's PSNR after conversion, and the wall-clock each route needs to reach the
teacher's PSNR - 0.5 dB -- by conversion from the teacher, and by training the student from scratch on the
images (Gaussians from scratch: random splats in a ball fitted to the images). Evaluation pauses the clock.
A route that does not get there within its cap is reported as "not reached in T s". Writes
nerf_conversion.json and nerf_conversion.md. About 15-20 minutes on one CPU thread with the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = ("mlp", "tensorf-vm", "tensorf-cp", "gaussians")


class Watch:
    """Wall-clock of a run that stops counting while the benchmark evaluates it, and records when the
    held-out PSNR first reached the target. An ``on_step`` hook of the trainer that ends the run (raises
    EnoughTraining) once the target or the cap is hit."""

    def __init__(self, evaluate, target: float, every: int, cap_s: float | None = None) -> None:
        self.evaluate, self.target, self.every, self.cap_s = evaluate, target, every, cap_s
        self.model = None
        self.start, self.paused = time.perf_counter(), 0.0
        self.reached_s, self.best, self.curve = None, float("-inf"), []

    def watching(self, model) -> Watch:
        """Evaluate ``model`` (the clock started when the watch was made, before the model was built)."""
        self.model = model
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def __call__(self, step: int, row: dict, losses: dict) -> None:
        """on_step hook: evaluate every ``every`` steps; EnoughTraining once the target or the cap is hit."""
        from gendistill.jobs.convert import EnoughTraining

        done = step + 1
        if done % self.every:
            if self.cap_s is not None and self.elapsed() > self.cap_s:
                raise EnoughTraining
            return
        seconds = self.elapsed()
        t0 = time.perf_counter()
        value = self.evaluate(self.model)
        self.paused += time.perf_counter() - t0
        self.best = max(self.best, value)
        self.curve.append((done, round(seconds, 2), round(value, 3)))
        if value >= self.target and self.reached_s is None:
            self.reached_s = seconds
        if self.reached_s is not None or (self.cap_s is not None and seconds > self.cap_s):
            raise EnoughTraining

    def summary(self) -> dict:
        best = self.best if self.curve else None
        return {"seconds_to_target": self.reached_s, "best_psnr": best, "seconds": self.elapsed(),
                "curve": self.curve}


def run_on_trainer(recipe, steps: int, phase: str, on_step=None, progress: bool = False):
    """Run ``recipe`` on the one trainer (checkpoints in a temporary folder, written only when it ends)."""
    from gendistill.convert.fit import field_optimizer
    from gendistill.jobs.convert import RecipeRun, TrainerSection, train_recipe

    with tempfile.TemporaryDirectory() as out:
        return train_recipe(RecipeRun(recipe, steps, phase, field_optimizer()), TrainerSection(checkpoint_every=0), 1,
                            out, progress=progress, on_step=on_step)


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()  # as the gendistill command does: the torchvision shim, passive OpenMP waits
    from gendistill.convert.data import shapes_views
    from gendistill.convert.measure import field_psnr, psnr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caption", default="a red cube")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--views", type=int, default=40)
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--convert-steps", type=int, default=400)
    parser.add_argument("--scratch-cap-s", type=float, default=180.0)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--pvd-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PVDConfig value of the conversions, e.g. points_per_step=2048")
    parser.add_argument("--teacher-checkpoint", default=None,
                        help="reuse this teacher if the file exists (its fit time is then unknown), else save it there")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    generator = torch.Generator().manual_seed(0)
    train = shapes_views(args.caption, args.views, generator, args.resolution)
    test = shapes_views(args.caption, 8, generator, args.resolution)
    samples = 48
    teacher, teacher_seconds = _teacher(train, args, samples)
    teacher_psnr = field_psnr(teacher, test, samples)
    target = teacher_psnr - 0.5
    print(f"teacher hashgrid: {teacher_psnr:.2f} dB on held-out views; target {target:.2f}")

    def field_eval(model):
        return field_psnr(model, test, samples)

    def splat_eval(model):
        from gendistill.convert.measure import render_splats

        return psnr(render_splats(model, test.cameras, test.background), test.images)

    rows = []
    for student in args.students.split(","):
        evaluate = splat_eval if student == "gaussians" else field_eval
        converted = _convert(student, teacher, train, args, Watch(evaluate, target, args.eval_every))
        scratch = _scratch(student, train, args, Watch(evaluate, target, args.eval_every, args.scratch_cap_s))
        rows.append({"student": student, "teacher_psnr": teacher_psnr, "converted": converted, "scratch": scratch})
        print(_row(rows[-1]), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"caption": args.caption, "resolution": args.resolution, "views": args.views,
              "teacher": {"architecture": "hashgrid", "psnr": teacher_psnr, "train_seconds": teacher_seconds,
                          "steps": args.teacher_steps},
              "target_psnr": target, "threads": torch.get_num_threads(), "rows": rows}
    (out / "nerf_conversion.json").write_text(json.dumps(result, indent=2))
    shown = sys.argv[1:] if argv is None else argv
    (out / "nerf_conversion.md").write_text(_markdown(result, " ".join(shown)))
    print((out / "nerf_conversion.md").read_text())
    return 0


def _teacher(train, args, samples):
    """The hashgrid teacher (fitted, or loaded from --teacher-checkpoint) and its fit time (None if loaded)."""
    from gendistill.convert.fit import FIELD_PHASE, FitConfig, NerfFitRecipe
    from gendistill.render.nerf import FieldConfig, build_field, load_field, save_field

    if args.teacher_checkpoint and Path(args.teacher_checkpoint).is_file():
        return load_field(args.teacher_checkpoint), None
    teacher = build_field(FieldConfig(architecture="hashgrid"), seed=0)
    t0 = time.perf_counter()
    config = FitConfig(steps=args.teacher_steps, num_samples=samples)
    run_on_trainer(NerfFitRecipe(teacher, train, config), config.steps, FIELD_PHASE, progress=True)
    seconds = time.perf_counter() - t0
    if args.teacher_checkpoint:
        save_field(teacher, args.teacher_checkpoint)
    return teacher, seconds


def _convert(student, teacher, train_views, args, watch: Watch) -> dict:
    from gendistill.config import load_config
    from gendistill.convert.measure import teacher_views
    from gendistill.convert.pvd import STUDENT_PHASE, PVDConfig, PVDRecipe
    from gendistill.convert.to_gaussians import SPLATS_PHASE, SplatConfig, SplatFitRecipe, place_splats
    from gendistill.render.nerf import FieldConfig, build_field

    generator = torch.Generator().manual_seed(1)
    if student == "gaussians":
        config = SplatConfig(steps=args.convert_steps)
        splats = place_splats(teacher, train_views.cameras, config, generator)
        targets = teacher_views(teacher, train_views.cameras, train_views.background, config.num_samples)
        run_on_trainer(SplatFitRecipe(splats, targets, config), config.steps, SPLATS_PHASE,
                       on_step=watch.watching(splats))
    else:
        model = build_field(FieldConfig(architecture=student, bound=teacher.config.bound), seed=1)
        config = load_config(PVDConfig, None, [f"steps={args.convert_steps}", *args.pvd_set])
        recipe = PVDRecipe(teacher, model, train_views.cameras, train_views.background, config, generator)
        run_on_trainer(recipe, config.steps, STUDENT_PHASE, on_step=watch.watching(model))
    return watch.summary()


def _scratch(student, train_views, args, watch: Watch) -> dict:
    from gendistill.convert.fit import FIELD_PHASE, FitConfig, NerfFitRecipe
    from gendistill.convert.to_gaussians import SPLATS_PHASE, SplatConfig, SplatFitRecipe
    from gendistill.render.gaussians import init_from_sphere
    from gendistill.render.nerf import FieldConfig, build_field

    generator = torch.Generator().manual_seed(1)
    steps = 100_000  # the cap in seconds ends the run
    if student == "gaussians":
        splats = init_from_sphere(SplatConfig().num_gaussians, 1.0, generator, sh_degree=0, opacity=0.5)
        run_on_trainer(SplatFitRecipe(splats, train_views, SplatConfig(steps=steps)), steps, SPLATS_PHASE,
                       on_step=watch.watching(splats))
    else:
        model = build_field(FieldConfig(architecture=student), seed=1)
        recipe = NerfFitRecipe(model, train_views, FitConfig(steps=steps, lr_final_ratio=1.0))
        run_on_trainer(recipe, steps, FIELD_PHASE, on_step=watch.watching(model))
    return watch.summary()


def _time(route: dict) -> str:
    reached = route["seconds_to_target"]
    return f"{reached:.1f} s" if reached is not None else f"not reached in {route['seconds']:.0f} s"


def _row(row: dict) -> str:
    c, s = row["converted"], row["scratch"]
    speedup = (f"{s['seconds_to_target'] / c['seconds_to_target']:.1f}x"
               if c["seconds_to_target"] and s["seconds_to_target"] else "-")
    best = [f"{r['best_psnr']:.2f}" if r["best_psnr"] is not None else "-" for r in (c, s)]
    return (f"| hashgrid -> {row['student']} | {row['teacher_psnr']:.2f} | {best[0]} | {best[1]} | "
            f"{_time(c)} | {_time(s)} | {speedup} |")


def _markdown(result: dict, args: str) -> str:
    head = ("| pair | teacher PSNR | converted PSNR | scratch PSNR | conversion: time to target | "
            "scratch: time to target | speed-up |\n|---|---|---|---|---|---|---|")
    lines = [f"Caption {result['caption']!r}, {result['views']} views at {result['resolution']} px, 8 held-out views; "
             f"target = teacher PSNR - 0.5 dB = {result['target_psnr']:.2f} dB; PSNR against the analytic renders; "
             f"{result['threads']} CPU thread(s); evaluation pauses the clock. Runs stop at the target, so the PSNR "
             f"columns are the best held-out PSNR before a run stopped.", "",
             f"Command: `python benchmarks/nerf_conversion.py {args}`".rstrip(), "", head]
    lines += [_row(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
