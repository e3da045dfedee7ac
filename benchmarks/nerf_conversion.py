"""Benchmark: progressive volume distillation (convert-nerf) against training the same student from scratch.

    OMP_NUM_THREADS=1 python benchmarks/nerf_conversion.py [--scene "a red cube|32|40" --scene ...]
        [--teacher-steps 800] [--convert-steps 600] [--scratch-steps 1500] [--scratch-cap-s 180]
        [--teacher-dir DIR] [--out benchmarks/results]

Each ``--scene "CAPTION|PIXELS|VIEWS"`` is one difficulty level (default: a red cube, 40 views at 32 px, and a
blue torus, 100 views at 64 px). A hashgrid teacher is fitted to shapes renders of the caption (8 further
views are the held-out ground truth). For each student (mlp, tensorf-vm, tensorf-cp, gaussians) it measures,
on the held-out views: the teacher's PSNR, the student's PSNR after conversion, and the time each route needs
to reach the teacher's PSNR - 0.5 dB -- by conversion from the teacher (the clock starts before the student
and the teacher bank are built), and by training the student from scratch on the images (Gaussians from
scratch: random splats in a ball fitted to the images; fields from scratch: fit-nerf's schedule, rates decaying
to a tenth over ``--scratch-steps``). Conversion and scratch of a pair run one after the
other in the same process. Both wall-clock and CPU (process) seconds are recorded; evaluation pauses both.
A route that does not get there within its cap is reported as "not reached in T s". Writes
nerf_conversion.json and nerf_conversion.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STUDENTS = ("mlp", "tensorf-vm", "tensorf-cp", "gaussians")
SCENES = ("a red cube|32|40", "a blue torus|64|100")
"""The default difficulty levels: CAPTION|PIXELS|VIEWS."""


class Watch:
    """Wall-clock of a run that stops counting while the benchmark evaluates it, and records when the
    held-out PSNR first reached the target. An ``on_step`` hook of the trainer that ends the run (raises
    EnoughTraining) once the target or the cap is hit."""

    def __init__(self, evaluate, target: float, every: int, cap_s: float | None = None) -> None:
        self.evaluate, self.target, self.every, self.cap_s = evaluate, target, every, cap_s
        self.model = None
        self.start, self.paused = time.perf_counter(), 0.0
        self.cpu_start, self.cpu_paused = time.process_time(), 0.0
        self.reached_s, self.reached_cpu_s, self.best, self.curve = None, None, float("-inf"), []

    def watching(self, model) -> Watch:
        """Evaluate ``model`` (the clock started when the watch was made, before the model was built)."""
        self.model = model
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def cpu_elapsed(self) -> float:
        return time.process_time() - self.cpu_start - self.cpu_paused

    def __call__(self, step: int, row: dict, losses: dict) -> None:
        """on_step hook: evaluate every ``every`` steps; EnoughTraining once the target or the cap is hit."""
        from gendistill.jobs.convert import EnoughTraining

        done = step + 1
        if done % self.every:
            if self.cap_s is not None and self.elapsed() > self.cap_s:
                raise EnoughTraining
            return
        seconds, cpu_seconds = self.elapsed(), self.cpu_elapsed()
        t0, c0 = time.perf_counter(), time.process_time()
        value = self.evaluate(self.model)
        self.paused += time.perf_counter() - t0
        self.cpu_paused += time.process_time() - c0
        self.best = max(self.best, value)
        self.curve.append((done, round(seconds, 2), round(cpu_seconds, 2), round(value, 3)))
        if value >= self.target and self.reached_s is None:
            self.reached_s, self.reached_cpu_s = seconds, cpu_seconds
        if self.reached_s is not None or (self.cap_s is not None and seconds > self.cap_s):
            raise EnoughTraining

    def summary(self) -> dict:
        best = self.best if self.curve else None
        return {"seconds_to_target": self.reached_s, "cpu_seconds_to_target": self.reached_cpu_s, "best_psnr": best,
                "seconds": self.elapsed(), "cpu_seconds": self.cpu_elapsed(),
                "curve_columns": ["step", "wall_s", "cpu_s", "psnr"], "curve": self.curve}


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", action="append", default=None, metavar="CAPTION|PIXELS|VIEWS",
                        help="a difficulty level (repeatable); default: " + " and ".join(SCENES))
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--convert-steps", type=int, default=600)
    parser.add_argument("--scratch-steps", type=int, default=1500,
                        help="the from-scratch fit's schedule (its rates decay over this many steps, as fit-nerf's do)")
    parser.add_argument("--scratch-cap-s", type=float, default=180.0)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--pvd-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PVDConfig value of the conversions, e.g. bank.enabled=false")
    parser.add_argument("--teacher-dir", default=None,
                        help="reuse the teachers saved in this folder (their fit time is then unknown), "
                             "else save them there")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--report-only", action="store_true", help="rebuild the markdown from OUT's JSON, run nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        result = json.loads((out / "nerf_conversion.json").read_text())
    else:
        torch.set_num_threads(1)
        scenes = [_scene_level(text, args) for text in (args.scene or SCENES)]
        shown = sys.argv[1:] if argv is None else argv
        command = f"OMP_NUM_THREADS=1 python benchmarks/nerf_conversion.py {shlex.join(shown)}".rstrip()
        result = {"command": command, "threads": torch.get_num_threads(), "pvd_set": args.pvd_set, "scenes": scenes}
        out.mkdir(parents=True, exist_ok=True)
        (out / "nerf_conversion.json").write_text(json.dumps(result, indent=2))
    (out / "nerf_conversion.md").write_text(_markdown(result))
    print((out / "nerf_conversion.md").read_text())
    return 0


def _scene_level(text: str, args) -> dict:
    """One difficulty level: the teacher, then conversion and scratch of every student, side by side."""
    from gendistill.convert.data import shapes_views
    from gendistill.convert.measure import field_psnr, psnr

    caption, resolution, views = _parse_scene(text)
    generator = torch.Generator().manual_seed(0)
    train = shapes_views(caption, views, generator, resolution)
    test = shapes_views(caption, 8, generator, resolution)
    samples = 48
    teacher, teacher_seconds = _teacher(train, args, samples, _teacher_path(args.teacher_dir, text))
    teacher_psnr = field_psnr(teacher, test, samples)
    target = teacher_psnr - 0.5
    print(f"{caption}, {views} views at {resolution} px: teacher hashgrid {teacher_psnr:.2f} dB on held-out views; "
          f"target {target:.2f}", flush=True)

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
    return {"caption": caption, "resolution": resolution, "views": views, "target_psnr": target,
            "teacher": {"architecture": "hashgrid", "psnr": teacher_psnr, "train_seconds": teacher_seconds,
                        "steps": args.teacher_steps}, "rows": rows}


def _parse_scene(text: str) -> tuple[str, int, int]:
    parts = text.split("|")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise SystemExit(f"--scene must be CAPTION|PIXELS|VIEWS, e.g. 'a red cube|32|40', got {text!r}")
    return parts[0], int(parts[1]), int(parts[2])


def _teacher_path(folder: str | None, scene: str) -> Path | None:
    if folder is None:
        return None
    return Path(folder) / ("teacher-" + scene.replace(" ", "-").replace("|", "-") + ".safetensors")


def _teacher(train, args, samples, checkpoint: Path | None):
    """The hashgrid teacher (fitted, or loaded from ``checkpoint``) and its fit time (None if loaded)."""
    from gendistill.convert.fit import FIELD_PHASE, FitConfig, NerfFitRecipe
    from gendistill.render.nerf import FieldConfig, build_field, load_field, save_field

    if checkpoint is not None and checkpoint.is_file():
        return load_field(checkpoint), None
    teacher = build_field(FieldConfig(architecture="hashgrid"), seed=0)
    t0 = time.perf_counter()
    config = FitConfig(steps=args.teacher_steps, num_samples=samples)
    run_on_trainer(NerfFitRecipe(teacher, train, config), config.steps, FIELD_PHASE, progress=True)
    seconds = time.perf_counter() - t0
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_field(teacher, checkpoint)
    return teacher, seconds


def _convert(student, teacher, train_views, args, watch: Watch) -> dict:
    from gendistill.config import load_config
    from gendistill.convert.pvd import STUDENT_PHASE, PVDConfig, PVDRecipe
    from gendistill.convert.to_gaussians import (SPLATS_PHASE, SplatConfig, SplatFitRecipe, place_splats,
                                                 teacher_targets)
    from gendistill.render.nerf import FieldConfig, build_field

    generator = torch.Generator().manual_seed(1)
    if student == "gaussians":
        config = SplatConfig(steps=args.convert_steps)
        splats = place_splats(teacher, train_views.cameras, config, generator)
        targets = teacher_targets(teacher, train_views.cameras, train_views.background, config.num_samples,
                                  generator)
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
    if student == "gaussians":
        steps = 100_000  # the cap in seconds ends the run
        splats = init_from_sphere(SplatConfig().num_gaussians, 1.0, generator, sh_degree=0, opacity=0.5)
        run_on_trainer(SplatFitRecipe(splats, train_views, SplatConfig(steps=steps)), steps, SPLATS_PHASE,
                       on_step=watch.watching(splats))
    else:  # fit-nerf's own schedule: rates decay to a tenth over --scratch-steps (or the cap ends it first)
        model = build_field(FieldConfig(architecture=student), seed=1)
        recipe = NerfFitRecipe(model, train_views, FitConfig(steps=args.scratch_steps))
        run_on_trainer(recipe, args.scratch_steps, FIELD_PHASE, on_step=watch.watching(model))
    return watch.summary()


def _time(route: dict) -> str:
    reached = route["seconds_to_target"]
    if reached is None:
        return f"not reached in {route['seconds']:.0f} s ({route['cpu_seconds']:.0f} CPU s)"
    return f"{reached:.1f} s ({route['cpu_seconds_to_target']:.1f} CPU s)"


def _speedup(row: dict, key: str) -> float | None:
    c, s = row["converted"][key], row["scratch"][key]
    return s / c if c and s else None


def _same_quality(row: dict) -> tuple[float | None, float | None]:
    """(PSNR, CPU speed-up) at the lower of the two routes' best PSNRs: how much sooner conversion got to the
    quality both routes reached (CPU seconds to the first evaluation at or above it)."""
    curves = [row[route]["curve"] for route in ("converted", "scratch")]
    if not all(curves):
        return None, None
    level = min(max(point[-1] for point in curve) for curve in curves)
    cpu = [next(point[2] for point in curve if point[-1] >= level) for curve in curves]
    return level, (cpu[1] / cpu[0] if cpu[0] > 0 else None)


def _ratio(value: float | None) -> str:
    return f"{value:.1f}x" if value is not None else "-"


def _row(row: dict) -> str:
    c, s = row["converted"], row["scratch"]
    best = [f"{r['best_psnr']:.2f}" if r["best_psnr"] is not None else "-" for r in (c, s)]
    return (f"| hashgrid -> {row['student']} | {row['teacher_psnr']:.2f} | {best[0]} | {best[1]} | "
            f"{_time(c)} | {_time(s)} | {_ratio(_speedup(row, 'seconds_to_target'))} | "
            f"{_ratio(_speedup(row, 'cpu_seconds_to_target'))} |")


def _markdown(result: dict) -> str:
    head = ("| pair | teacher PSNR | converted PSNR | scratch PSNR | conversion: time to target (CPU) | "
            "scratch: time to target (CPU) | speed-up (wall) | speed-up (CPU) |\n|---|---|---|---|---|---|---|---|")
    intro = (f"Target = teacher PSNR - 0.5 dB; PSNR against the analytic renders of 8 held-out views; "
             f"{result['threads']} CPU thread(s); evaluation pauses both clocks; conversion and scratch of a pair run "
             f"in the same process, one after the other. Runs stop at the target, so the PSNR columns are the best "
             f"held-out PSNR before a run stopped.")
    lines = [intro, "", f"Command: `{result.get('command', '(not recorded)')}`"]
    for level in result["scenes"]:
        title = (f"**{level['caption']}**, {level['views']} views at {level['resolution']} px; target "
                 f"{level['target_psnr']:.2f} dB")
        lines += ["", title, "", head]
        lines += [_row(r) for r in level["rows"]]
    lines += ["", "Speed-up per pair and difficulty level: to the target (wall / CPU), and in CPU seconds to the "
              "lower of the two routes' best PSNRs (the quality both reached, in dB):", "",
              "| pair | " + " | ".join(f"{lv['caption']} {lv['resolution']} px" for lv in result["scenes"]) + " |",
              "|---|" + "---|" * len(result["scenes"])]
    for i, row in enumerate(result["scenes"][0]["rows"]):
        lines.append(f"| hashgrid -> {row['student']} | " + " | ".join(_summary_cell(lv["rows"][i])
                                                                      for lv in result["scenes"]) + " |")
    return "\n".join(lines) + "\n"


def _summary_cell(row: dict) -> str:
    level, same = _same_quality(row)
    at_level = f"{_ratio(same)} at {level:.2f} dB" if level is not None else "-"
    return (f"{_ratio(_speedup(row, 'seconds_to_target'))} / {_ratio(_speedup(row, 'cpu_seconds_to_target'))}; "
            f"{at_level}")


if __name__ == "__main__":
    raise SystemExit(main())
