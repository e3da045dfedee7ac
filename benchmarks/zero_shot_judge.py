"""Benchmark: the zero-shot judge (the teacher as a classifier) on held-out shapes renders.

    python benchmarks/zero_shot_judge.py [--images 40] [--draws 16] [--model shapes-teacher] [--out benchmarks/results]

Each held-out render is judged against all 40 captions "a <colour> <shape>" (no view phrase); a pick
is right when it names the render's colour and shape, and right on shape when the shape matches. The shapes
classifier, trained on these renders, is the reference judge. Writes zero_shot_judge.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.backends.zero_shot_judge import ZeroShotJudge
    from gendistill.domains.shapes.dataset import fixed_split
    from gendistill.domains.shapes.scene import COLOURS, SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--model", default="shapes-teacher")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    batch = fixed_split(args.images, "heldout")
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    prompts = [f"a {c} {s}" for c, s in pairs]
    judge = ZeroShotJudge(TextToImageModel(load_pipeline(args.model)), draws=args.draws)
    start = time.perf_counter()
    choice = judge.judge(batch.images, prompts).choice.tolist()
    seconds = (time.perf_counter() - start) / args.images
    truth = [(list(COLOURS)[c], SHAPES[s]) for c, s in zip(batch.colour_ids.tolist(), batch.shape_ids.tolist())]
    caption_acc = sum(pairs[k] == t for k, t in zip(choice, truth)) / args.images
    shape_acc = sum(pairs[k][1] == t[1] for k, t in zip(choice, truth)) / args.images
    result = {"model": args.model, "images": args.images, "draws": args.draws, "candidates": len(prompts),
              "caption_accuracy": caption_acc, "shape_accuracy": shape_acc, "seconds_per_image": seconds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot_judge.json").write_text(json.dumps(result, indent=2))
    text = (f"Zero-shot judge ({args.model}, {args.draws} noise draws, {len(prompts)} candidate captions) on "
            f"{args.images} held-out renders: caption accuracy {caption_acc:.3f}, shape accuracy {shape_acc:.3f}, "
            f"{seconds:.2f} s per image.\n")
    (out / "zero_shot_judge.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
