"""Benchmark: the zero-shot judge (the teacher as a classifier) on held-out shapes renders.

    python benchmarks/zero_shot_judge.py [--images 40] [--draws 16] [--model shapes-teacher] [--out benchmarks/results]

Each held-out render is judged against all 40 captions ("a red cube", "an orange cube": no view phrase); a pick
is right when it names the render's colour and shape, and right on shape when the shape matches. Then the same
renders as black outlines on white (the silhouette's edge, a sketch the teacher never saw) are judged on shape
alone (``judged_shapes``: the best caption over every colour). Writes zero_shot_judge.json and .md.
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
    from gendistill.domains.shapes.evaluation import judged_shapes
    from gendistill.domains.shapes import all_scenes, caption
    from gendistill.domains.shapes.scene import COLOURS, SHAPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--model", default="shapes-teacher")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    batch = fixed_split(args.images, "heldout")
    scenes = all_scenes()
    pairs = [(scene.colour, scene.shape) for scene in scenes]
    prompts = [caption(scene) for scene in scenes]
    judge = ZeroShotJudge(TextToImageModel(load_pipeline(args.model)), draws=args.draws)
    start = time.perf_counter()
    choice = judge.judge(batch.images, prompts).choice.tolist()
    seconds = (time.perf_counter() - start) / args.images
    truth = [(list(COLOURS)[c], SHAPES[s]) for c, s in zip(batch.colour_ids.tolist(), batch.shape_ids.tolist())]
    caption_acc = sum(pairs[k] == t for k, t in zip(choice, truth)) / args.images
    shape_acc = sum(pairs[k][1] == t[1] for k, t in zip(choice, truth)) / args.images
    outline_shapes = judged_shapes(judge, outlines(batch.alpha))
    outline_acc = (outline_shapes == batch.shape_ids).double().mean().item()
    result = {"model": args.model, "images": args.images, "draws": args.draws, "candidates": len(prompts),
              "caption_accuracy": caption_acc, "shape_accuracy": shape_acc, "seconds_per_image": seconds,
              "outline_shape_accuracy": outline_acc}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot_judge.json").write_text(json.dumps(result, indent=2))
    text = (f"Zero-shot judge ({args.model}, {args.draws} noise draws, {len(prompts)} candidate captions) on "
            f"{args.images} held-out renders: caption accuracy {caption_acc:.3f}, shape accuracy {shape_acc:.3f}, "
            f"{seconds:.2f} s per image. On the same renders drawn as black outlines: shape accuracy "
            f"{outline_acc:.3f} (chance 0.2).\n")
    (out / "zero_shot_judge.md").write_text(text)
    print(text, end="")
    return 0


def outlines(alpha):
    """Black lines on white where the silhouette ``alpha`` (N, 1, H, W) changes: a plain sketch of each render."""
    import torch.nn.functional as F

    dx = (alpha[..., :, 1:] - alpha[..., :, :-1]).abs()
    dy = (alpha[..., 1:, :] - alpha[..., :-1, :]).abs()
    edge = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))
    edge = F.max_pool2d((edge > 0.25).float(), 3, stride=1, padding=1)  # lines about 2-3 pixels wide
    return (1 - edge).repeat(1, 3, 1, 1)


if __name__ == "__main__":
    raise SystemExit(main())
