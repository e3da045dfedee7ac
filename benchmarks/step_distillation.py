"""Benchmark: each shapes teacher at its step counts beside every shipped student of it, in one run.

    python benchmarks/step_distillation.py [--num-samples 160] [--out benchmarks/results] [--student DIR ...]

Two families: the VP teacher (``assets/shapes-teacher``, 50/25/8/4/2/1 steps) with the UNet students, and the
flow-matching teacher (``assets/shapes-flow-teacher``, 28/8/4/2/1 steps, when shipped) with the flow students.
Each student is measured at 1/2/4 steps plus a hybrid row (its teacher takes the first step); a compressed
student (KOALA: a smaller UNet sampled like its teacher) and a multi-CFG student (guidance in one pass) at the
teacher's 50 and 25 steps and guidance. Writes step_distillation.json and step_distillation.md (prompt accuracy,
FID, diversity, NFE, ms per image, each student's training wall-clock, its network's parameters against the
teacher's, and its speed-up per image over the teacher at the teacher's default steps, or at the same steps for
those two). Everything is measured in one run on one machine, so the ratios between rows are what to read.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "gendistill" / "assets"
STUDENT_PATTERNS = ("shapes-*step*", "shapes-meanflow*", "shapes-twinflow*", "shapes-boot*", "shapes-koala*",
                    "shapes-multi-cfg*")
SAME_STEPS_RECIPES = ("koala", "multi_cfg")
"""Students that save per-step cost, not steps: a smaller UNet (KOALA), one pass for all guidance (multi-CFG)."""


@dataclass(frozen=True)
class Family:
    """A teacher, the step counts it is measured at (the first is its default), and its network family."""

    label: str
    folder: Path
    steps: tuple[int, ...]


FAMILIES = (Family("teacher", ASSETS / "shapes-teacher", (50, 25, 8, 4, 2, 1)),
            Family("flow teacher", ASSETS / "shapes-flow-teacher", (28, 8, 4, 2, 1)))


def shipped_students(assets: Path) -> list[Path]:
    found = {p for pattern in STUDENT_PATTERNS for p in assets.glob(pattern) if (p / "model_index.json").is_file()}
    return sorted(found)


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()  # as the gendistill command does: the torchvision shim, passive OpenMP waits
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=160)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--student", action="append", default=[], metavar="DIR",
                        help="also measure this student folder (e.g. a run's pipeline/ that does not ship)")
    args = parser.parse_args(argv)

    evaluator = ShapesEvaluator.load()
    students = [*shipped_students(ASSETS), *map(Path, args.student)]
    results, labelled, notes = {"teachers": {}, "students": {}}, [], []
    for family in FAMILIES:
        if (family.folder / "model_index.json").is_file():
            measure_family(family, students, evaluator, args.num_samples, results, labelled, notes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step_distillation.json").write_text(json.dumps(results, indent=2))
    text = format_table(labelled) + "\n\nStudent training wall-clock, speed-up per image over the teacher at its " \
        "default steps:\n" + "\n".join(notes) + "\n"
    (out / "step_distillation.md").write_text(text)
    print(text)
    return 0


def measure_family(family: Family, students: list[Path], evaluator, num_samples: int, results: dict,
                   labelled: list, notes: list) -> None:
    """The teacher's rows, then each student of the teacher's network family (1/2/4 steps and a hybrid)."""
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import default_guidance, evaluate_model

    teacher = TextToImageModel(load_pipeline(str(family.folder)))
    t_guidance = default_guidance(teacher, family.folder)
    rows = [shown(family.label, evaluate_model(teacher, evaluator, k, "auto", t_guidance, num_samples))
            for k in family.steps]
    results["teachers"][family.label] = [asdict(r) for r in rows]
    labelled += [(family.label, r) for r in rows]
    for folder in students:
        student = TextToImageModel(load_pipeline(str(folder)))
        if student.family != teacher.family:
            continue
        meta = json.loads((folder / "gendistill.json").read_text()) if (folder / "gendistill.json").is_file() else {}
        name = folder.name if folder.name != "pipeline" else folder.parent.name  # a run's DIR/pipeline
        same_steps = meta.get("recipe") in SAME_STEPS_RECIPES
        if same_steps:
            own = measure_same_steps(name, student, family, rows, evaluator, num_samples)
        else:
            own = measure_few_step(name, student, folder, meta, teacher, evaluator, num_samples)
        results["students"][name] = {"teacher": family.label, "train_seconds": meta.get("train_seconds"),
                                     "parameters": parameters(student), "rows": [asdict(r) for r in own]}
        labelled += [(name, r) for r in own]
        teacher_row = next(r for r in rows if r.steps == own[0].steps) if same_steps else rows[0]
        speedup = teacher_row.ms_per_image / own[0].ms_per_image
        size = parameters(student) / parameters(teacher)
        notes.append(f"- {name}: trained in {meta.get('train_seconds', 'n/a')} s; {parameters(student):,} network "
                     f"parameters ({size:.2f}x the {family.label}'s); {own[0].steps}-step images "
                     f"{speedup:.2f}x faster than the {family.label} at {teacher_row.steps} steps")


def measure_few_step(name: str, student, folder: Path, meta: dict, teacher, evaluator, num_samples: int) -> list:
    """A step-distilled student at 1/2/4 steps, plus a hybrid row where the teacher takes the first step."""
    from gendistill.domains.shapes.evaluation import default_guidance, evaluate_model

    guidance = default_guidance(student, folder)
    steps = [k for k in (1, 2, 4) if k <= meta.get("max_steps", 4)]
    own = [shown(name, evaluate_model(student, evaluator, k, "auto", guidance, num_samples)) for k in steps]
    if max(steps) > 1 and student.interval_embedder is None:  # hybrid: the teacher takes the first step
        # (a flow-map student jumps by its own map from pure noise only: no hybrid row)
        own.append(shown(name, evaluate_model(student, evaluator, max(steps), "auto", guidance, num_samples,
                                              base=teacher, base_steps=1, base_guidance=1.0)))
    return own


def measure_same_steps(name: str, student, family: Family, teacher_rows: list, evaluator, num_samples: int) -> list:
    """A student that keeps its teacher's steps, at the teacher's step counts and guidance above 8 (50 and 25)."""
    from gendistill.domains.shapes.evaluation import evaluate_model

    return [shown(name, evaluate_model(student, evaluator, row.steps, "auto", row.guidance, num_samples))
            for row in teacher_rows if row.steps >= 25]


def parameters(model) -> int:
    """Parameters of a model's denoising network (every expert of a phased student)."""
    return sum(p.numel() for network in getattr(model, "experts", [model.network]) for p in network.parameters())


def shown(label: str, row):
    """Print a row as soon as it is measured (a long run that fails later keeps what it printed)."""
    from gendistill.domains.shapes.evaluation import format_table

    print(format_table([(label, row)]).splitlines()[-1], flush=True)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
