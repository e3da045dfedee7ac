"""3D editing under mixed precision, through its job: bf16 autocast on the CPU here, and fp16/bf16 on CUDA
(gpu-marked, run by benchmarks/gpu_check.sh): finite losses, the selected Gaussians move, the teacher's layers
run in the half dtype (see tests/precision_spy.py)."""

import importlib

import pytest
import torch

from gendistill.jobs.edit_3d.config import load_edit3d_config
from gendistill.render.gaussian_sets import Placement, concat_gaussians, placed_gaussians
from gendistill.render.gaussians import init_from_sphere
from gendistill.render.ply import save_ply
from gendistill.shipped import shipped_configs_dir
from precision_spy import TrainerSpy, assert_trained
from tiny_pipelines import tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # each test builds trainers in its own precision

SMALL = ["iterations=2", "batch_size=1", "turntable.frames=2", "turntable.size=16", "progress=false",
         "localisation.views=2", "localisation.every=2", "run.checkpoint_every=0"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit3d-precision")
    tiny_sd_pipeline(root / "sd")
    g = torch.Generator().manual_seed(0)
    parts = [placed_gaussians(init_from_sphere(60, 0.6, g, sh_degree=0, opacity=0.5), Placement(0.5, (0.0, y, 0.0)))
             for y in (-0.6, 0.6)]
    return root / "sd", save_ply(concat_gaussians(parts), root / "two.ply")


def run_edit(precision, device, inputs, tmp_path, monkeypatch):
    model, scene = inputs
    job = importlib.import_module("gendistill.jobs.edit_3d.run")
    spy = TrainerSpy(job.Trainer, precision).install(monkeypatch, job)
    config = load_edit3d_config(shipped_configs_dir() / "edit-3d" / "shapes-edit-3d.yaml",
                                [f"model={model}", f"device={device}", *SMALL])
    return job.run_edit_3d(scene, "a green cube", "cube", config, tmp_path, progress=False), spy


def test_edit_3d_trains_under_cpu_bf16_autocast(inputs, tmp_path, monkeypatch):
    _, spy = run_edit("bf16", "cpu", inputs, tmp_path, monkeypatch)
    assert_trained(spy, "bf16")
    assert (tmp_path / "scene.ply").is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_edit_3d_trains_in_half_precision_on_cuda(precision, inputs, tmp_path, monkeypatch):
    _, spy = run_edit(precision, "cuda", inputs, tmp_path, monkeypatch)
    assert_trained(spy, precision)
    assert spy.trainers[0].device.type == "cuda"
