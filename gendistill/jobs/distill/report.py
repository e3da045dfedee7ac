"""The end of a distillation run on the shapes world: the teacher-vs-student table and the sample grid."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gendistill.backends.text_to_image import TextToImageModel
from gendistill.domains.shapes import all_scenes, caption
from gendistill.domains.shapes.evaluation import (ModelQuality, ShapesEvaluator, default_guidance, evaluate_model,
                                                  format_table)
from gendistill.backends.generation import GenerationRequest, generate
from gendistill.render.images import make_grid, save_png


@dataclass(frozen=True)
class DistillReport:
    teacher: list[ModelQuality]
    student: list[ModelQuality]
    train_seconds: float

    def markdown(self) -> str:
        return format_table([("teacher", r) for r in self.teacher] + [("student", r) for r in self.student])


def final_report(config, teacher: TextToImageModel, student: TextToImageModel, bound, out_dir: Path,
                 train_seconds: float) -> DistillReport:
    """Measure teacher and student, write metrics.json and grid.png, print the table."""
    evaluator = ShapesEvaluator.load()
    t_guidance = config.eval.teacher_guidance
    t_guidance = default_guidance(teacher, config.teacher) if t_guidance is None else t_guidance
    s_guidance = bound.guidance if config.eval.student_guidance is None else config.eval.student_guidance
    n = config.eval.num_samples
    teacher_rows = [evaluate_model(teacher, evaluator, k, "auto", t_guidance, n) for k in config.eval.teacher_steps]
    student_steps = [k for k in config.eval.student_steps if k <= bound.max_steps]
    student_rows = [evaluate_model(student, evaluator, k, "auto", s_guidance, n) for k in student_steps]
    report = DistillReport(teacher_rows, student_rows, train_seconds)
    metrics = {"recipe": config.recipe.KIND, "teacher_model": config.teacher, "train_seconds": train_seconds,
               "teacher": [asdict(r) for r in teacher_rows], "student": [asdict(r) for r in student_rows]}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_png(comparison_grid(teacher, student, config, t_guidance, s_guidance, bound.default_steps),
             out_dir / "grid.png")
    print(report.markdown())
    return report


@torch.inference_mode()
def comparison_grid(teacher: TextToImageModel, student: TextToImageModel, config, t_guidance: float,
                    s_guidance: float, student_steps: int):
    """Top row: the teacher at its most steps; bottom row: the student; same prompts and seeds."""
    scenes = all_scenes()[:: max(1, len(all_scenes()) // config.eval.grid_prompts)][: config.eval.grid_prompts]
    prompts = [caption(s) for s in scenes]
    rows = []
    for model, steps, guidance in ((teacher, max(config.eval.teacher_steps), t_guidance),
                                   (student, student_steps, s_guidance)):
        request = GenerationRequest.for_prompts(prompts, steps=steps, guidance=guidance, seed=123)
        rows.append(generate(model, request, progress=False).images.cpu())
    return make_grid(torch.cat(rows), columns=len(prompts))
