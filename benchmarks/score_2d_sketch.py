"""Benchmark: ``gendistill sketch`` (DiffSketcher) on the shapes teacher, against a baseline in the same run.

    OMP_NUM_THREADS=1 python benchmarks/score_2d_sketch.py [--seeds 0 1 2] [--iterations 150] [--strokes 16]
        [--arm "NAME=KEY=VALUE;KEY=VALUE" ...] [--out benchmarks/results]

For each arm, each of the five shapes ("a red sphere", "a red cube", ...) and each seed, one sketch is made with
``run_sketch`` on one thread; then:

- the zero-shot judge (the teacher as a classifier, ``judged_shapes``: the best caption over every colour)
  reads the shape of every sketch.png (right when it names the prompt's shape; chance 0.2);
- sketch.svg is re-rendered by cairosvg, an independent SVG renderer, and compared with sketch.png (PSNR);
- the CPU seconds (``time.process_time``) and wall seconds of each sketch, attention init included.

The default arms, on the shapes-sketch preset: ``attention+sds`` (the preset: DiffSketcher's attention init,
plain SDS), ``attention+asds`` (DiffSketcher's augmented SDS, its own augmentation) and ``random+sds`` (uniform
stroke starts), so that accuracy and time come as ratios of one run.
Writes score_2d_sketch.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARMS = ["attention+sds=", "attention+asds=method.kind=asds;method.sds.guidance_scale=7.5;"
                "method.sds.timesteps.kind=range;method.sds.timesteps.t_min=0.05;method.sds.timesteps.t_max=0.95",
                "random+sds=init=random"]


def svg_psnr(svg: Path, png: Path) -> float:
    """PSNR (dB) of cairosvg's rendering of ``svg`` against ``png`` (both RGB over white)."""
    import cairosvg
    import numpy as np
    from PIL import Image

    ours = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 255
    drawn = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg.read_bytes()))).convert("RGBA")
    white = Image.new("RGBA", drawn.size, (255, 255, 255, 255))
    theirs = np.asarray(Image.alpha_composite(white, drawn).convert("RGB"), dtype=np.float64) / 255
    mse = float(((ours - theirs) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    return name, [s for s in sets.split(";") if s]


def run_arm(name, overrides, args, model, judge, shapes) -> dict:
    import torch

    from gendistill.domains.shapes.evaluation import judged_shapes
    from gendistill.jobs.score_2d.sketch import load_sketch_config, run_sketch
    from gendistill.render.images import load_image
    from gendistill.shipped import resolve_preset

    config = load_sketch_config(resolve_preset(args.preset, "sketch"),
                                [f"strokes.num_strokes={args.strokes}", f"run.iterations={args.iterations}",
                                 "progress=false", "run.checkpoint_every=0", *overrides])
    rows = []
    for seed in args.seeds:
        for shape in shapes:
            prompt = f"a {args.colour} {shape}"
            with tempfile.TemporaryDirectory() as folder:
                cpu, wall = time.process_time(), time.perf_counter()
                run_sketch(prompt, dataclasses.replace(config, seed=seed), folder, progress=False, model=model)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                out = Path(folder)
                image = load_image(out / "sketch.png")[None]
                if args.keep:
                    keep = Path(args.keep) / name
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / f"{shape}-{seed}.png").write_bytes((out / "sketch.png").read_bytes())
                read = shapes[int(judged_shapes(judge, image)[0])] if judge is not None else None
                psnr = svg_psnr(out / "sketch.svg", out / "sketch.png")
            rows.append({"prompt": prompt, "shape": shape, "seed": seed, "judged": read, "right": read == shape,
                         "psnr_db": round(psnr, 2), "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)})
            print(f"{name:>14} {prompt:>18} seed {seed}: judged {read}, PSNR {psnr:.1f} dB, {cpu:.0f} CPU-s",
                  flush=True)
    torch.cuda.empty_cache()
    n = len(rows)
    return {"arm": name, "overrides": overrides, "rows": rows, "accuracy": sum(r["right"] for r in rows) / n,
            "min_psnr_db": min(r["psnr_db"] for r in rows), "mean_psnr_db": sum(r["psnr_db"] for r in rows) / n,
            "mean_cpu_s": sum(r["cpu_s"] for r in rows) / n, "max_cpu_s": max(r["cpu_s"] for r in rows),
            "mean_wall_s": sum(r["wall_s"] for r in rows) / n}


def markdown(result: dict) -> str:
    lines = [f"Sketches (DiffSketcher) on {result['model']}: {result['strokes']} strokes, {result['iterations']} "
             f"steps, shapes x seeds {result['seeds']}, one thread. Command: `{result['command']}`", "",
             "| arm | judge reads the prompt's shape | cairosvg PSNR min / mean (dB) | CPU s per sketch mean / max "
             "| wall s mean |", "|---|---|---|---|---|"]
    for arm in result["arms"]:
        right = sum(r["right"] for r in arm["rows"])
        lines.append(f"| {arm['arm']} | {right}/{len(arm['rows'])} ({arm['accuracy']:.2f}) | "
                     f"{arm['min_psnr_db']:.1f} / {arm['mean_psnr_db']:.1f} | {arm['mean_cpu_s']:.0f} / "
                     f"{arm['max_cpu_s']:.0f} | {arm['mean_wall_s']:.0f} |")
    lines += ["", "Per shape (judged shape per seed):", "", "| arm | " + " | ".join(result["shapes"]) + " |",
              "|---|" + "---|" * len(result["shapes"])]
    for arm in result["arms"]:
        cells = [", ".join(str(r["judged"]) for r in arm["rows"] if r["shape"] == s) for s in result["shapes"]]
        lines.append(f"| {arm['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    import sys

    import torch

    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.backends.zero_shot_judge import ZeroShotJudge
    from gendistill.domains.shapes.scene import SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--strokes", type=int, default=16)
    parser.add_argument("--colour", default="red")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--preset", default="shapes-sketch")
    parser.add_argument("--model", default="shapes-teacher")
    parser.add_argument("--draws", type=int, default=16, help="the judge's noise draws")
    parser.add_argument("--arm", action="append", default=None, help="NAME=KEY=VALUE;KEY=VALUE (repeatable)")
    parser.add_argument("--name", default="score_2d_sketch")
    parser.add_argument("--keep", default=None, help="copy every sketch.png into this folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = TextToImageModel(load_pipeline(args.model))
    judge = ZeroShotJudge(model, draws=args.draws)
    arms = [run_arm(*parse_arm(a), args, model, judge, args.shapes) for a in (args.arm or DEFAULT_ARMS)]
    result = {"model": args.model, "strokes": args.strokes, "iterations": args.iterations, "seeds": args.seeds,
              "shapes": args.shapes, "colour": args.colour, "judge_draws": args.draws,
              "command": "OMP_NUM_THREADS=1 python benchmarks/score_2d_sketch.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "arms": arms}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out / f"{args.name}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
