"""Benchmark: score distillation on 2D things, all three parts of issue 16 in one run.

    python benchmarks/score_2d.py [--parts edit,stylize,sketch] [--out benchmarks/results]

Runs ``score_2d_edit.py`` (LUSD against DDS and SDS editing), ``score_2d_stylize.py`` (Attention Distillation
against its no-attention-loss baseline) and ``score_2d_sketch.py`` (DiffSketcher's strokes read by the zero-shot
judge, SVG parity) with their defaults, each writing its own JSON and markdown, then gathers them into
score_2d.json and score_2d.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("edit", "stylize", "sketch")


def run_part(part: str, out: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"score_2d_{part}", HERE / f"score_2d_{part}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(out)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    for part in parts:
        run_part(part, out)
    gathered = {p: json.loads((out / f"score_2d_{p}.json").read_text()) for p in PARTS
                if (out / f"score_2d_{p}.json").is_file()}
    (out / "score_2d.json").write_text(json.dumps(gathered, indent=2))
    text = "\n".join(f"### {p}\n\n{(out / f'score_2d_{p}.md').read_text()}" for p in gathered)
    (out / "score_2d.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
