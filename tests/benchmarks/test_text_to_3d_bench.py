"""The pure helpers of benchmarks/text_to_3d.py and its diversity section: targets, seed diversity, held-out render
parsing, summary."""

import importlib.util
import sys
from pathlib import Path

import torch

from gendistill.render.images import make_grid, save_png

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "text_to_3d.py"
_spec = importlib.util.spec_from_file_location("bench_text_to_3d", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)
_DIV_PATH = _PATH.with_name("text_to_3d_diversity.py")
_div_spec = importlib.util.spec_from_file_location("bench_text_to_3d_diversity", _DIV_PATH)
diversity = importlib.util.module_from_spec(_div_spec)
_div_spec.loader.exec_module(diversity)


def test_targets_need_time_iou_and_accuracy():
    assert bench.targets_met(299.0, 0.75, 0.8)["all"]
    assert bench.targets_met(301.0, 0.9, 1.0) == {"time": False, "iou": True, "accuracy": True, "all": False}
    assert not bench.targets_met(10.0, 0.74, 1.0)["all"]
    assert not bench.targets_met(10.0, 0.9, None)["accuracy"]


def test_seed_diversity_is_zero_for_identical_runs_and_grows_with_difference():
    a = torch.rand(8, 3, 4, 4)
    same = diversity.seed_diversity([a, a.clone()], [torch.ones(8, 5), torch.ones(8, 5)])
    assert same == {"render_diversity": 0.0, "feature_diversity": 0.0}
    b = a + 0.1
    c = a + 0.3
    div = diversity.seed_diversity([a, b, c], [torch.zeros(8, 2), torch.zeros(8, 2), torch.full((8, 2), 3.0)])
    assert abs(div["render_diversity"] - (0.1 + 0.3 + 0.2) / 3) < 1e-5  # mean over the 3 pairs
    assert abs(div["feature_diversity"] - 2 * 18 ** 0.5 / 3) < 1e-4
    assert diversity.mean_pairwise([1.0], lambda x, y: 1.0) != diversity.mean_pairwise([1.0], lambda x, y: 1.0)  # nan


def test_heldout_renders_reads_back_the_top_row_of_the_grid(tmp_path: Path):
    renders = torch.rand(8, 3, 64, 64)
    truth = torch.zeros(8, 3, 64, 64)
    save_png(make_grid(torch.cat([renders, truth]), columns=8), tmp_path / "heldout.png")
    back = diversity.heldout_renders(tmp_path)
    assert back.shape == (8, 3, 64, 64)
    assert (back - renders).abs().max() <= 0.5 / 255 + 1e-6  # only the PNG's 8-bit rounding
    assert diversity.heldout_renders(tmp_path / "missing") is None


def test_summary_counts_met_missed_and_absent_shapes():
    def row(prompt, ok):
        return {"method": "sds", "representation": "gaussians", "model": "teacher", "seed": 0, "prompt": prompt,
                "targets": {"all": ok}, "iou": 0.8 if ok else 0.5, "prompt_accuracy": 1.0, "seconds": 1.0,
                "cpu_seconds": 1.0}

    line = bench.summary_lines([row("a red sphere", True), row("a blue cube", False)], [])[0]
    assert "1/5 shapes" in line and "missed: a blue cube" in line and "not run: a green cylinder" in line
    assert "CPU s instead of wall s as the time: 1/5" in line
