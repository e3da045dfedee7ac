"""Benchmark: a few models head to head at many images a row, for decisions the 160-image table cannot make.

    python benchmarks/head_to_head.py shapes-teacher:50 shapes-dmd2-1step:1 runs/dmd2-more/pipeline:1 \
        [--num-samples 480] [--out benchmarks/results]

Each argument is a model folder (or a shipped model's short name) and the step count to sample it at; each is
sampled at its own default guidance on the same prompts and seeds. FID of the classifier's features falls as the
number of images grows (its bias is about 1/N), so only rows of one run compare. Writes head_to_head.json and
head_to_head.md, with FID and diversity to four decimals.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_entry(text: str) -> tuple[str, int]:
    """``FOLDER:STEPS`` -> (folder, steps); the folder may itself contain colons."""
    folder, _, steps = text.rpartition(":")
    if not folder or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected FOLDER:STEPS with STEPS >= 1, got {text!r}")
    return folder, int(steps)


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, default_guidance, evaluate_model
    from gendistill.shipped import resolve_model_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=parse_entry, metavar="FOLDER:STEPS")
    parser.add_argument("--num-samples", type=int, default=480)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    evaluator = ShapesEvaluator.load()
    rows = []
    for folder, steps in args.models:
        model = TextToImageModel(load_pipeline(resolve_model_name(folder)))
        quality = evaluate_model(model, evaluator, steps, "auto", default_guidance(model, folder), args.num_samples)
        rows.append({"model": folder, **asdict(quality)})
        print(row_line(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "head_to_head.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | steps | guidance | NFE | prompt acc | FID | diversity | ms/image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [row_line(r) for r in rows]
    (out / "head_to_head.md").write_text(f"{args.num_samples} images a row, one run.\n\n" + "\n".join(lines) + "\n")
    return 0


def row_line(r: dict) -> str:
    return (f"| {r['model']} | {r['steps']} | {r['guidance']:g} | {r['nfe']:g} | {r['prompt_accuracy']:.4f} | "
            f"{r['fid']:.4f} | {r['diversity']:.4f} | {r['ms_per_image']:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
