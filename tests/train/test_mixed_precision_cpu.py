"""bf16 autocast on the CPU (accelerate ``mixed_precision="bf16"``) trains through the real jobs: the DMD2
preset, the flow-family and BOOT presets, and text-to-3D on Gaussians, on tiny components. The runs finish with
finite losses, move their trained parameters and run their network layers in bfloat16; the students load and
sample in stock diffusers. The CUDA fp16 and bf16 runs of every recipe are in tests/gpu/test_mixed_precision.py."""

from __future__ import annotations

import pytest
import torch

from precision_runs import ROOT, UNET_FILE, assert_samples, assert_scene_written, distill, teacher_dir, text_to_3d
from precision_spy import assert_trained, differing_tensors
from tiny_pipelines import make_tiny_teachers, network_file

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # each test builds trainers in its own precision


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
    return make_tiny_teachers(tmp_path_factory.mktemp("teachers"))


def test_dmd2_trains_under_cpu_bf16_autocast(tiny_teachers, tmp_path, monkeypatch):
    preset = ROOT / "configs" / "distill" / "sd15-dmd2.yaml"
    result, spy = distill(preset, "bf16", "cpu", tiny_teachers, tmp_path, monkeypatch, "recipe.fake_updates=1")
    assert_trained(spy, "bf16")
    trainer = spy.trainers[0]
    assert trainer.device.type == "cpu" and trainer.scaler is None
    assert differing_tensors(result.pipeline / UNET_FILE, tiny_teachers / "sd" / UNET_FILE)
    assert_samples(result.pipeline, "cpu", torch.float32)


@pytest.mark.parametrize("name", ["sd3-meanflow", "sd3-twinflow", "sd15-boot", "sdxl-koala"])
def test_flow_family_boot_and_koala_presets_train_under_cpu_bf16_autocast(name, tiny_teachers, tmp_path,
                                                                         monkeypatch):
    """MeanFlow's torch.func.jvp, TwinFlow's recursive targets, BOOT's bootstrap and KOALA's feature hooks in
    bf16 (the GPU presets' precision), through the job; the exported folder loads and samples in stock
    diffusers."""
    preset = ROOT / "configs" / "distill" / f"{name}.yaml"
    result, spy = distill(preset, "bf16", "cpu", tiny_teachers, tmp_path, monkeypatch)
    assert_trained(spy, "bf16")
    assert differing_tensors(network_file(result.pipeline), network_file(teacher_dir(preset, tiny_teachers)),
                             compressed="koala" in name)
    assert_samples(result.pipeline, "cpu", torch.float32)


def test_text_to_3d_gaussians_train_under_cpu_bf16_autocast(tiny_teachers, tmp_path, monkeypatch):
    result, spy = text_to_3d("bf16", "cpu", tiny_teachers / "sd", tmp_path, monkeypatch)
    assert_trained(spy, "bf16")
    assert spy.trainers[0].config.mixed_precision == "bf16"
    assert_scene_written(result, tmp_path)


def test_structure_aware_sds_trains_under_cpu_bf16_autocast(tiny_teachers, tmp_path, monkeypatch):
    model = tiny_teachers / "sd"
    result, spy = text_to_3d("bf16", "cpu", model, tmp_path, monkeypatch, "auto", "method.kind=sds-rgbd",
                             f"method.depth_model={model}")
    assert_trained(spy, "bf16")
    assert_scene_written(result, tmp_path)
