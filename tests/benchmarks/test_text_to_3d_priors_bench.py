"""benchmarks/text_to_3d_priors.py: students against the teacher on shared prompts, the target's three bounds,
the teacher's other settings as a control, and --models entries that carry settings."""

import importlib.util
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", _ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


priors, bench = _load("text_to_3d_priors"), _load("text_to_3d")


def row(model, prompt, iou, acc, cpu, iterations=300, guidance="cfg"):
    return {"method": "sds", "representation": "gaussians", "model": model, "prompt": prompt, "seed": 0,
            "iterations": iterations, "iou": iou, "prompt_accuracy": acc, "cpu_seconds": cpu,
            "model_guidance": guidance, "run_dir": "/nonexistent"}


def test_compare_uses_only_shared_prompts_and_checks_all_three_bounds():
    teacher = {f"{p}|0": row("teacher", p, iou, 1.0, 200, 600) for p, iou in (("a", 0.90), ("b", 0.80), ("c", 0.5))}
    student = {f"{p}|0": row("s", p, iou, 1.0, 110) for p, iou in (("a", 0.885), ("b", 0.76))}
    got = priors.compare(student, teacher)
    assert got["runs"] == 2 and got["iou"] == pytest.approx(0.8225) and got["ref_iou"] == pytest.approx(0.85)
    assert got["time_ratio"] == pytest.approx(0.55) and got["met"]  # 0.0275 below, 55% of the time
    slow = {k: dict(r, cpu_seconds=125) for k, r in student.items()}
    assert not priors.compare(slow, teacher)["met"]  # 62.5% of the teacher's time
    worse = {k: dict(r, prompt_accuracy=0.875) for k, r in student.items()}
    farther = {k: dict(r, iou=r["iou"] - 0.01) for k, r in student.items()}
    assert not priors.compare(farther, teacher)["met"]  # 0.0375 below
    assert not priors.compare(worse, teacher)["met"]
    assert priors.compare({"z|0": row("s", "z", 1, 1, 1)}, teacher) is None


def test_the_table_compares_every_group_with_the_teacher_at_the_most_iterations():
    rows = [row("teacher", p, 0.9, 1.0, 200, 600) for p in "ab"] + [row("teacher", p, 0.85, 1.0, 100) for p in "ab"]
    rows += [row("lcm", p, 0.9, 1.0, 100, guidance="embedded") for p in "ab"]
    rows += [row("dmd2", p, 0.6, 0.125, 90, guidance="distilled") for p in "ab"]
    lines = priors.priors_table(rows)
    by_model = {(cells[1].strip(), cells[2].strip()): [c.strip() for c in cells] for line in lines[4:]
                if (cells := line.split("|"))}
    assert by_model[("teacher", "600")][-2] == "reference"
    assert by_model[("teacher", "300")][-2].startswith("control")
    assert by_model[("lcm", "300")][3:5] == ["embedded", "1"] and by_model[("lcm", "300")][-2] == "yes"
    assert by_model[("dmd2", "300")][-2] == "**no**"
    assert priors.priors_table([r for r in rows if r["model"] != "teacher"]) == []


def test_a_models_entry_may_carry_its_settings():
    assert bench.model_overrides("teacher") == [f"model={bench.ROOT / 'assets/shapes-teacher'}"]
    assert bench.model_overrides("dmd2-cfg")[1:] == ["model_guidance=cfg"]
    assert all((bench.ROOT / (v if isinstance(v, str) else v[0])).is_dir() for v in bench.MODELS.values())
