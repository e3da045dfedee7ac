"""``gendistill eval``: prompt accuracy, FID, diversity, NFE and speed of a model on the shapes world."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from gendistill.commands.parsing import DefaultsFormatter


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure a text-to-image model on the shapes world",
                       description="Sample every shapes prompt with several seeds, classify the images with the "
                                   "shipped classifier, and report prompt accuracy, FID (classifier features vs "
                                   "held-out renders), diversity, NFE and speed.",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", required=True, help="diffusers pipeline folder or shipped model (e.g. shapes-teacher)")
    p.add_argument("--steps", type=int, nargs="+", default=[25], help="one or more step counts")
    p.add_argument("--sampler", default="auto", help="sampler (auto: follow the pipeline's scheduler)")
    p.add_argument("--guidance", type=float, default=None,
                   help="guidance scale (default: the model card's, else 5 for a teacher, 0 for an LCM student)")
    p.add_argument("--num-samples", type=int, default=160, help="images per setting (spread over all 40 prompts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first batch")
    p.add_argument("--base-model", default=None, help="hybrid sampling: base model for the first --base-steps")
    p.add_argument("--base-steps", type=int, default=0, help="steps of --base-model before --model")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.set_defaults(run=run)


def run(args) -> int:
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, default_guidance, evaluate_model, format_table

    model = TextToImageModel(load_pipeline(args.model))
    base = TextToImageModel(load_pipeline(args.base_model)) if args.base_model else None
    guidance = args.guidance if args.guidance is not None else default_guidance(model, args.model)
    evaluator = ShapesEvaluator.load()
    rows = [evaluate_model(model, evaluator, steps, args.sampler, guidance, args.num_samples, args.seed,
                           base=base, base_steps=args.base_steps) for steps in args.steps]
    print(format_table([(Path(args.model).name, r) for r in rows]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": [asdict(r) for r in rows]}, indent=2))
        print(f"wrote {args.json}")
    return 0
