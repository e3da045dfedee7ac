"""Benchmark: the shapes teacher at 50/8/4/2/1 steps against every shipped student at 1/2/4 steps.

    python benchmarks/step_distillation.py [--num-samples 160] [--out benchmarks/results]

Writes step_distillation.json and step_distillation.md (prompt accuracy, FID, diversity, NFE, ms per
image, each student's training wall-clock) plus a hybrid row per student (teacher for the first step).
Everything is measured in one run on one machine, so the ratios between rows are what to read.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shipped_students(assets: Path) -> list[Path]:
    return sorted(p for p in assets.glob("shapes-*step*") if (p / "model_index.json").is_file())


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()  # as the gendistill command does: the torchvision shim, passive OpenMP waits
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, default_guidance, evaluate_model, format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(ROOT / "assets" / "shapes-teacher"))
    parser.add_argument("--num-samples", type=int, default=160)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--student", action="append", default=[], metavar="DIR",
                        help="also measure this student folder (e.g. a run's pipeline/ that does not ship)")
    args = parser.parse_args(argv)

    evaluator = ShapesEvaluator.load()
    teacher = TextToImageModel(load_pipeline(args.teacher))
    t_guidance = default_guidance(teacher, args.teacher)
    results = {"teacher": [asdict(evaluate_model(teacher, evaluator, k, "auto", t_guidance, args.num_samples))
                           for k in (50, 8, 4, 2, 1)], "students": {}}
    labelled = [("teacher", _row(r)) for r in results["teacher"]]
    trained = []
    for folder in [*shipped_students(ROOT / "assets"), *map(Path, args.student)]:
        meta = json.loads((folder / "gendistill.json").read_text()) if (folder / "gendistill.json").is_file() else {}
        student = TextToImageModel(load_pipeline(str(folder)))
        guidance = default_guidance(student, folder)
        steps = [k for k in (1, 2, 4) if k <= meta.get("max_steps", 4)]
        rows = [evaluate_model(student, evaluator, k, "auto", guidance, args.num_samples) for k in steps]
        if max(steps) > 1:  # hybrid: the teacher takes the first of the student's steps
            rows.append(evaluate_model(student, evaluator, max(steps), "auto", guidance, args.num_samples,
                                       base=teacher, base_steps=1, base_guidance=1.0))
        name = folder.name if folder.name != "pipeline" else folder.parent.name  # a run's DIR/pipeline
        results["students"][name] = {"train_seconds": meta.get("train_seconds"), "rows": [asdict(r) for r in rows]}
        labelled += [(name, r) for r in rows]
        trained.append(f"- {name}: trained in {meta.get('train_seconds', 'n/a')} s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_distillation.json").write_text(json.dumps(results, indent=2))
    text = format_table(labelled) + "\n\nStudent training wall-clock:\n" + "\n".join(trained) + "\n"
    (out / "step_distillation.md").write_text(text)
    print(text)
    return 0


def _row(d):
    from gendistill.domains.shapes.evaluation import ModelQuality

    return ModelQuality(**d)


if __name__ == "__main__":
    raise SystemExit(main())
