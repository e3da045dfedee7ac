"""benchmarks/nerf_conversion.py on the one trainer: its watch ends a run at the target (or the cap) and keeps
the curve, on a scene small enough to take a second."""

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "nerf_conversion.py"
_spec = importlib.util.spec_from_file_location("bench_nerf_conversion", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench
_spec.loader.exec_module(bench)

pytestmark = pytest.mark.nerf


def test_the_watch_stops_scratch_and_conversion_runs_at_the_target():
    pytest.importorskip("nerfstudio")
    from gendistill.convert.data import shapes_views
    from gendistill.render.nerf import FieldConfig, build_field
    from gendistill.render.nerf.fields import MLPEncodingSizes

    views = shapes_views("a red cube", 3, torch.Generator().manual_seed(0), size=8)
    args = Namespace(convert_steps=9, scratch_steps=20,
                     pvd_set=["points_per_step=32", "rays_per_step=8", "num_samples=4"])
    scratch = bench._scratch("mlp", views, args, bench.Watch(lambda model: 1.0, 0.5, every=2))
    assert scratch["curve"][0][0] == 2 and len(scratch["curve"]) == 1  # stopped at the first evaluation
    assert scratch["seconds_to_target"] is not None and scratch["best_psnr"] == 1.0
    teacher = build_field(FieldConfig(architecture="mlp", mlp=MLPEncodingSizes(num_frequencies=2), hidden_width=8),
                          seed=0)
    seen = []
    watch = bench.Watch(lambda model: seen.append(model) or 0.0, 1.0, every=3)
    converted = bench._convert("mlp", teacher, views, args, watch)
    assert [point[0] for point in converted["curve"]] == [3, 6, 9]  # never reached: ran every step
    assert converted["seconds_to_target"] is None and seen[0] is not teacher
