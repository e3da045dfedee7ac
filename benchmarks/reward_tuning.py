"""Flash-DMD's joint RL in miniature (issue 13, item 2b): does distillation as the regulariser keep reward tuning
from reward hacking? Each model is sampled in 1 step over all 40 prompts; the table gives the size reward's
quantity (mean object coverage, pixel code shared with benchmarks/control_transfer.py, not the evaluator) beside
prompt accuracy, FID and diversity.

    gendistill distill shapes-flash-dmd-rl --out runs/flash-rl
    gendistill distill shapes-flash-dmd-rl --set recipe.distill_weight=0 --out runs/flash-rl-nodistill
    python benchmarks/reward_tuning.py shapes-dmd2-1step runs/flash-rl/pipeline runs/flash-rl-nodistill/pipeline \\
        --out benchmarks/results/reward_tuning
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("control_transfer", Path(__file__).with_name("control_transfer.py"))
control_transfer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(control_transfer)


def measure(folder: str, evaluator, num_samples: int, steps: int) -> dict:
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import default_guidance, evaluate_model

    model = TextToImageModel(load_pipeline(folder))
    images: list = []
    with torch.inference_mode():
        q = evaluate_model(model, evaluator, steps, guidance=default_guidance(model, folder), num_samples=num_samples,
                           images_out=images)
    return {"model": folder, "coverage": control_transfer.object_coverage(images[0]),
            "prompt_accuracy": q.prompt_accuracy, "fid": q.fid, "diversity": q.diversity, "first": images[0][:6]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="the distilled student first, then the reward-tuned ones")
    parser.add_argument("--num-samples", type=int, default=160)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/reward_tuning")
    args = parser.parse_args(argv)
    from gendistill.compat import prepare_process
    from gendistill.domains.shapes.evaluation import ShapesEvaluator
    from gendistill.render.images import make_grid, save_png

    prepare_process()
    evaluator = ShapesEvaluator.load()
    rows = [measure(m, evaluator, args.num_samples, args.steps) for m in args.models]
    base = rows[0]
    lines = ["| model | coverage | prompt acc | FID | diversity | FID vs first | diversity vs first |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['coverage']:.3f} | {r['prompt_accuracy']:.3f} | {r['fid']:.2f} | "
                     f"{r['diversity']:.3f} | {r['fid'] / base['fid']:.2f}x | {r['diversity'] / base['diversity']:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(make_grid(torch.cat([r.pop("first") for r in rows]), columns=6), out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
