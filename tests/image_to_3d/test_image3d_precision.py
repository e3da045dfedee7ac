"""Image-to-3D under mixed precision, through its job: bf16 autocast on the CPU here, and fp16/bf16 on CUDA
(gpu-marked, run by benchmarks/gpu_check.sh). Each run must finish with finite losses, move the scene and run
the teacher's layers in the half dtype (see tests/precision_spy.py)."""

import importlib

import pytest

from gendistill.jobs.image_to_3d.config import load_image3d_config
from gendistill.render.images import save_png
from precision_spy import TrainerSpy, assert_trained

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # each test builds trainers in its own precision

SMALL = ["iterations=2", "batch_size=2", "scene.init.num_points=150", "turntable.size=16", "turntable.frames=2",
         "progress=false", "run.checkpoint_every=0", "reference.weight=100"]  # the baseline: both losses run


def run_image_to_3d(precision, device, teacher, tmp_path, monkeypatch):
    from gendistill.domains.shapes import Scene, render_batch
    from gendistill.render.cameras import Camera

    image = tmp_path / "input.png"
    save_png(render_batch([Scene("cone", "yellow")], [Camera(0.0, 20.0)]).rgb[0], image)
    job = importlib.import_module("gendistill.jobs.image_to_3d.run")
    spy = TrainerSpy(job.Trainer, precision).install(monkeypatch, job)
    config = load_image3d_config(None, [f"model={teacher}", f"device={device}", *SMALL])
    result = job.run_image_to_3d(image, config, tmp_path / "out", progress=False)
    return result, spy


def test_image_to_3d_trains_under_cpu_bf16_autocast(tiny_teacher, tmp_path, monkeypatch):
    result, spy = run_image_to_3d("bf16", "cpu", tiny_teacher, tmp_path, monkeypatch)
    assert_trained(spy, "bf16")
    assert result.steps == 2 and (tmp_path / "out" / "scene.ply").is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_image_to_3d_trains_in_half_precision_on_cuda(precision, tiny_teacher, tmp_path, monkeypatch):
    result, spy = run_image_to_3d(precision, "cuda", tiny_teacher, tmp_path, monkeypatch)
    assert_trained(spy, precision)
    assert spy.trainers[0].device.type == "cuda" and result.steps == 2
