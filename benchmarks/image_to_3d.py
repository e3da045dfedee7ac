"""Benchmark: image-to-3D (Isotropic3D: SDS from the input's CLIP embedding alone) against the reference-loss
baseline (the same run plus an L2 loss between the render at the input's camera and the input), on the five
shapes.

    OMP_NUM_THREADS=1 python benchmarks/image_to_3d.py [--prompts "a red sphere;a blue cube"] [--seeds 0]
        [--methods isotropic,reference] [--set k=v ...] [--resume]

For each caption, the input is the analytic render from the front camera (azimuth 0, elevation 20: the
reference loss's assumed camera; none of the 8 held-out evaluation cameras, and a camera the teacher's
random training cameras never hit exactly). Each row is one ``run_image_to_3d`` call with
configs/image-to-3d/shapes-image-to-3d[-reference].yaml, scored on the 8 held-out views (silhouette IoU, colour
error, prompt/colour accuracy: eval-3d's metrics) and on an azimuth sweep (12 cameras, 30 deg apart, at 20 deg
elevation, the input's camera among them): the IoU's spread (population std) over those azimuths is the
"isotropy" figure. Targets (issue 17): IoU >= 0.75 and the colour right from the 8 views (colour accuracy
>= 7/8), and an azimuth spread lower than the baseline's on the same shape. Rows are merged into
results/image_to_3d.json as they finish (``--resume`` skips those there); image_to_3d.md is rebuilt each time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a red sphere", "a blue cube", "a green cylinder", "a yellow cone", "a purple torus")
PRESETS = {"isotropic": "shapes-image-to-3d", "reference": "shapes-image-to-3d-reference"}
INPUT_AZIMUTH, INPUT_ELEVATION = 0.0, 20.0
SWEEP_AZIMUTHS, SWEEP_ELEVATION = tuple(range(0, 360, 30)), 20.0
TARGET_IOU, TARGET_COLOUR = 0.75, 7 / 8


def input_image(prompt: str, folder: Path) -> Path:
    """The analytic render of ``prompt`` from the input camera, saved as a PNG (what a user would upload)."""
    from gendistill.domains.shapes import parse_caption, render_batch
    from gendistill.render.cameras import Camera
    from gendistill.render.images import save_png

    path = folder / f"{prompt.replace(' ', '_')}.png"
    save_png(render_batch([parse_caption(prompt)], [Camera(INPUT_AZIMUTH, INPUT_ELEVATION)]).rgb[0], path)
    return path


def azimuth_sweep(scene, prompt: str, background) -> list[float]:
    """Silhouette IoU of the scene against the analytic object at each sweep azimuth."""
    import torch

    from gendistill.jobs.text_to_3d.evaluate3d import evaluate_renders
    from gendistill.render.cameras import Camera, stack_cameras

    cameras = [Camera(float(a), SWEEP_ELEVATION) for a in SWEEP_AZIMUTHS]
    with torch.no_grad():
        rgb, alpha = scene.render_views(stack_cameras(cameras), torch.tensor(background))
    return evaluate_renders(rgb, alpha, prompt, cameras).per_view_iou


def run_row(prompt: str, method: str, seed: int, overrides: list[str], runs_dir: Path) -> dict:
    import torch

    from gendistill.jobs.image_to_3d.config import load_image3d_config
    from gendistill.jobs.image_to_3d.run import run_image_to_3d
    from gendistill.shipped import resolve_preset

    out = runs_dir / f"{method}-{prompt.replace(' ', '_')}-s{seed}"
    image = input_image(prompt, runs_dir)
    config = load_image3d_config(resolve_preset(PRESETS[method], "image-to-3d"),
                                 [f"evaluate_caption={prompt}", f"seed={seed}", "progress=false", *overrides])
    cpu, wall = time.process_time(), time.perf_counter()
    result = run_image_to_3d(image, config, out, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sweep = azimuth_sweep(result.scene, prompt, config.background)
    e = result.evaluation
    views = torch.tensor(e.per_view_iou, dtype=torch.float64)
    return {"prompt": prompt, "method": method, "seed": seed, "iterations": config.iterations,
            "iou": round(e.iou, 4), "colour_error": round(e.colour_error, 4),
            "prompt_accuracy": e.prompt_accuracy, "colour_accuracy": e.colour_accuracy,
            "shape_accuracy": e.shape_accuracy, "heldout_iou_std": round(float(views.std(unbiased=False)), 4),
            "sweep_iou": [round(v, 4) for v in sweep],
            "sweep_iou_std": round(float(torch.tensor(sweep).std(unbiased=False)), 4),
            "sweep_iou_min": round(min(sweep), 4), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "run_dir": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)}


def targets(row: dict) -> dict[str, bool]:
    return {"iou": row["iou"] >= TARGET_IOU, "colour": (row["colour_accuracy"] or 0) >= TARGET_COLOUR}


def format_markdown(rows: list[dict], command: str) -> str:
    lines = ["# Image-to-3D (Isotropic3D) against the reference-loss baseline", "",
             f"`{command}`", "",
             f"Input: the analytic render at azimuth {INPUT_AZIMUTH:g}, elevation {INPUT_ELEVATION:g}. IoU, colour "
             "error and accuracies from the 8 held-out views; sweep: silhouette IoU at 12 azimuths (30 deg apart, "
             f"elevation {SWEEP_ELEVATION:g}), its population std and minimum.", "",
             "| prompt | method | seed | IoU | colour err | colour acc | prompt acc | held-out IoU std | sweep IoU std "
             "| sweep IoU min | wall s | IoU & colour met |", "|" + "---|" * 12]
    for r in sorted(rows, key=lambda r: (PROMPTS.index(r["prompt"]) if r["prompt"] in PROMPTS else 9, r["method"],
                                         r["seed"])):
        met = all(targets(r).values())
        lines.append(f"| {r['prompt']} | {r['method']} | {r['seed']} | {r['iou']:.3f} | {r['colour_error']:.3f} | "
                     f"{r['colour_accuracy']:.3f} | {r['prompt_accuracy']:.3f} | {r['heldout_iou_std']:.4f} | "
                     f"{r['sweep_iou_std']:.4f} | {r['sweep_iou_min']:.3f} | {r['wall_s']:.0f} | "
                     f"{'yes' if met else 'no'} |")
    lines += ["", *summary_lines(rows)]
    return "\n".join(lines) + "\n"


def summary_lines(rows: list[dict]) -> list[str]:
    """Per method: means and targets met; per shape: is the isotropic spread below the baseline's?"""
    out = ["| method | rows | mean IoU | mean colour acc | mean sweep IoU std | IoU & colour met |",
           "|---|---|---|---|---|---|"]
    for method in PRESETS:
        mine = [r for r in rows if r["method"] == method]
        if mine:
            mean = lambda k, rows=mine: sum(r[k] for r in rows) / len(rows)  # noqa: E731
            met = sum(all(targets(r).values()) for r in mine)
            out.append(f"| {method} | {len(mine)} | {mean('iou'):.3f} | {mean('colour_accuracy'):.3f} | "
                       f"{mean('sweep_iou_std'):.4f} | {met}/{len(mine)} |")
    pairs = [(a, b) for a in rows for b in rows if a["method"] == "isotropic" and b["method"] == "reference"
             and (a["prompt"], a["seed"]) == (b["prompt"], b["seed"])]
    if pairs:
        lower = sum(a["sweep_iou_std"] < b["sweep_iou_std"] for a, b in pairs)
        out += ["", f"Azimuth spread (sweep IoU std) lower with Isotropic3D than with the reference loss: "
                    f"{lower}/{len(pairs)} (shape, seed) pairs."]
    return out


def save(rows: list[dict], out: Path, command: str) -> list[dict]:
    """Merge ``rows`` into the JSON (rows another process wrote meanwhile are kept), rebuild the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "image_to_3d.json"
    key = lambda r: (r["prompt"], r["method"], r["seed"])  # noqa: E731
    merged = {key(r): r for r in (json.loads(path.read_text())["rows"] if path.is_file() else [])}
    merged.update({key(r): r for r in rows})
    rows = list(merged.values())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    os.replace(tmp, path)
    (out / "image_to_3d.md").write_text(format_markdown(rows, command))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default=";".join(PROMPTS))
    parser.add_argument("--methods", default="isotropic,reference")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true", help="skip the rows already in the JSON")
    parser.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench-image-to-3d"))
    args = parser.parse_args(argv)
    from gendistill.compat import prepare_process

    prepare_process()
    command = "OMP_NUM_THREADS=1 python benchmarks/image_to_3d.py " + shlex.join(argv if argv is not None else
                                                                                sys.argv[1:])
    results, runs = Path(args.results_dir), Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    path = results / "image_to_3d.json"
    rows = json.loads(path.read_text())["rows"] if args.resume and path.is_file() else []
    if not args.resume and path.is_file():
        path.unlink()  # a fresh run replaces the old table
    done = {(r["prompt"], r["method"], r["seed"]) for r in rows}
    for prompt in args.prompts.split(";"):
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in args.methods.split(","):
                if (prompt, method, seed) in done:
                    continue
                row = run_row(prompt, method, seed, args.overrides, runs)
                rows = save([*rows, row], results, command.strip())
                print(json.dumps({k: row[k] for k in ("prompt", "method", "iou", "colour_accuracy",
                                                       "sweep_iou_std", "wall_s")}), flush=True)
    save(rows, results, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
