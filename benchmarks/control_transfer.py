"""Control transfer (Gandikota et al., "Distilling Diversity and Control in Diffusion Models", 2025): a LoRA
control trained on the teacher works unchanged on its distilled students, and one trained on a student works on
the teacher (issue 13, item 3c).

The control is a size slider (``configs/distill/shapes-size-slider.yaml``: rank-4 adapters fine-tuned on renders
from a closer camera). Its effect on a model is the change in the mean *object coverage* of its samples (the
share of pixels that are not the white background; pixel code, not the evaluator), the same prompts and seeds
with and without the adapters fused at scale 1. Transfer = effect on the other model / effect on the model the
slider was trained on (target >= 0.7). Prompt accuracy with the slider on says the content survives.
OUT.png shows the first images of each model without the sliders (one row per model), then with each slider
(one row per model, slider by slider), same prompts and seeds.

    gendistill distill shapes-size-slider --out runs/slider-teacher
    gendistill distill shapes-size-slider --set teacher=shapes-dmd2-1step --set eval.teacher_steps=[1] \\
        --set eval.student_steps=[1] --out runs/slider-dmd2
    python benchmarks/control_transfer.py --slider teacher=runs/slider-teacher/lora \\
        --slider shapes-dmd2-1step=runs/slider-dmd2/lora --out benchmarks/results/control_transfer
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

GRID_COLUMNS = 6
MODELS = {  # name -> steps it is sampled with
    "shapes-teacher": 25,
    "shapes-dmd2-1step": 1,
    "shapes-dmd2-4step": 4,
    "shapes-lcm-4step": 4,
    "shapes-progressive-4step": 4,
}


def object_coverage(images: torch.Tensor, threshold: float = 0.75) -> float:
    """Mean share of pixels whose darkest channel is below ``threshold`` (the background is white)."""
    return (images.amin(dim=1) < threshold).float().mean().item()


def sample(name: str, lora: str | None, evaluator, num_samples: int) -> dict:
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.lora import apply_lora_file
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import default_guidance, evaluate_model

    pipe = load_pipeline(name)
    if lora is not None:
        apply_lora_file(pipe, lora)
    model = TextToImageModel(pipe)
    images: list = []
    with torch.inference_mode():
        quality = evaluate_model(model, evaluator, MODELS.get(name, 4), guidance=default_guidance(model, name),
                                 num_samples=num_samples, images_out=images)
    return {"coverage": object_coverage(images[0]), "prompt_accuracy": quality.prompt_accuracy, "fid": quality.fid,
            "first": images[0][:GRID_COLUMNS]}


def measure(sliders: dict[str, str], models: list[str], num_samples: int, grid: list) -> list[dict]:
    """Rows of the table; ``grid`` collects, per model, its first images without and with each slider."""
    from gendistill.domains.shapes.evaluation import ShapesEvaluator

    evaluator = ShapesEvaluator.load(n_per_scene=4)
    plain = {m: sample(m, None, evaluator, num_samples) for m in models}
    grid += [plain[m]["first"] for m in models]
    rows = []
    for trained_on, lora in sliders.items():
        effects = {}
        for m in models:
            slid = sample(m, lora, evaluator, num_samples)
            grid.append(slid["first"])
            effects[m] = slid["coverage"] - plain[m]["coverage"]
            rows.append({"slider_trained_on": trained_on, "model": m, "coverage_without": plain[m]["coverage"],
                         "coverage_with": slid["coverage"], "effect": effects[m],
                         "prompt_accuracy_without": plain[m]["prompt_accuracy"],
                         "prompt_accuracy_with": slid["prompt_accuracy"]})
            print({k: v for k, v in rows[-1].items()}, flush=True)
        home = effects[trained_on]
        for row in rows[-len(models):]:
            row["transfer"] = row["effect"] / home if home else float("nan")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| slider trained on | applied to | coverage without | with | effect | transfer | prompt acc without | with |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['slider_trained_on']} | {r['model']} | {r['coverage_without']:.3f} | "
                     f"{r['coverage_with']:.3f} | {r['effect']:+.3f} | {r['transfer']:.2f} | "
                     f"{r['prompt_accuracy_without']:.3f} | {r['prompt_accuracy_with']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slider", action="append", required=True, metavar="MODEL=LORA",
                        help="a slider and the model it was trained on (teacher = shapes-teacher)")
    parser.add_argument("--models", nargs="+", default=None, help="models to apply the sliders to")
    parser.add_argument("--num-samples", type=int, default=80)
    parser.add_argument("--out", default="benchmarks/results/control_transfer")
    args = parser.parse_args(argv)
    from gendistill.compat import prepare_process
    from gendistill.shipped import resolve_model_name

    prepare_process()
    sliders = {}
    for item in args.slider:
        name, _, lora = item.partition("=")
        sliders["shapes-teacher" if name == "teacher" else name] = lora
    models = args.models or [m for m in MODELS if Path(resolve_model_name(m)).is_dir()]
    models = list(dict.fromkeys([*sliders, *models]))
    grid: list = []
    rows = measure(sliders, models, args.num_samples, grid)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from gendistill.render.images import make_grid, save_png

    save_png(make_grid(torch.cat(grid), columns=GRID_COLUMNS), out.with_suffix(".png"))  # rows: see the docstring
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    out.with_suffix(".md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
