"""The real ``ns-train gendistill-sds`` command from the shell, where the nerf extra is installed: nerfstudio's CLI imports
torchvision before any gendistill code, so this passes only if the package's start-up hook
(``gendistill_torchvision_shim.pth``) is installed and works. 20 iterations on tiny settings (~20 s on a CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nerfstudio")

pytestmark = [pytest.mark.nerf, pytest.mark.slow]

NS_TRAIN = Path(sys.executable).parent / "ns-train"  # the console script of the venv running the tests


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def test_the_startup_hook_is_installed_in_site_packages():
    assert any((Path(p) / "gendistill_torchvision_shim.pth").is_file() for p in sys.path), (
        "reinstall the package (pip install -e .): the .pth goes in with it")
    code = "import sys; print(any(type(f).__name__ == 'TorchvisionOpsShim' for f in sys.meta_path))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_ns_train_help_lists_the_method():
    assert NS_TRAIN.is_file(), f"no ns-train beside {sys.executable}"
    proc = subprocess.run([str(NS_TRAIN), "--help"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gendistill-sds" in proc.stdout


def test_ns_train_gendistill_sds_runs_20_iterations(tmp_path):
    import torch

    argv = [str(NS_TRAIN), "gendistill-sds", "--max-num-iterations", "20", "--vis", "tensorboard",
            "--output-dir", str(tmp_path / "out"), "--experiment-name", "sds", "--timestamp", "run",
            "--steps-per-eval-batch", "0", "--steps-per-eval-image", "0", "--steps-per-eval-all-images", "0",
            "--steps-per-save", "1000", "--pipeline.datamanager.train-resolution", "16",
            "--pipeline.datamanager.eval-resolution", "16", "--pipeline.model.num-samples", "8",
            "--pipeline.model.prompt", "a red cube"]  # no --machine.device-type: the CPU is picked without CUDA
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "does not exist" not in proc.stderr  # the torchvision::nms crash
    run = tmp_path / "out" / "sds" / "gendistill-sds" / "run"
    assert (run / "nerfstudio_models" / "step-000000019.ckpt").is_file()
    config = (run / "config.yml").read_text()
    assert f"device_type: {'cuda' if torch.cuda.is_available() else 'cpu'}" in config
