"""``generate --sampler auto`` gives the stock pipeline's latents for every scheduler the StableDiffusion, SDXL
and SD3 pipelines accept: scheduler x spacing x prediction x Karras, with zero terminal SNR and guidance rescale
rows (issue 12). The matrix is ``benchmarks/scheduler_parity.py``'s, which also writes the table."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "scheduler_parity.py"
_spec = importlib.util.spec_from_file_location("bench_scheduler_parity", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)

TOL = 1e-4
CASES = bench.matrix_cases()
_pipes: dict = {}


def pipeline_for(case):
    key = (case.family, case.prediction)
    if key not in _pipes:
        _pipes[key] = bench.tiny_pipeline(case)
        _pipes[key].original_scheduler = _pipes[key].scheduler
    pipe = _pipes[key]
    pipe.scheduler = pipe.original_scheduler
    return pipe


def test_the_matrix_covers_what_the_issue_names():
    names = {c.scheduler for c in CASES}
    for required in ("DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                     "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverMultistepScheduler",
                     "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler",
                     "DEISMultistepScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                     "LCMScheduler", "TCDScheduler", "FlowMatchEulerDiscreteScheduler",
                     "FlowMatchHeunDiscreteScheduler"):
        assert required in names
    assert {c.spacing for c in CASES} >= {"leading", "trailing", "linspace"}
    assert any(c.zero_snr for c in CASES) and any(c.rescale for c in CASES) and any(c.karras for c in CASES)
    assert {c.family for c in CASES} == {"sd", "sdxl", "sd3"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_auto_matches_the_stock_pipeline(case):
    pipe = pipeline_for(case)
    with torch.inference_mode():
        row = bench.measure(pipe, case)
    assert "error" not in row and "stock_error" not in row, row
    assert row["sampler"].startswith(case.scheduler), row  # it ran the scheduler itself, no fallback
    assert row["max_abs_diff"] <= TOL, row
