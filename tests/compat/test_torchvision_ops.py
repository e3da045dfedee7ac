"""The torchvision workaround: with CPU torch, torchvision (a CUDA build) imports once the op schemas exist."""

import importlib.util
import subprocess
import sys

import pytest

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision not installed (an optional extra pulls it in)")
def test_torchvision_imports_after_prepare_process():
    code = ("from gendistill.compat import prepare_process; prepare_process(); "
            "import torchvision, diffusers.pipelines; print(torchvision.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_define_is_idempotent_and_safe():
    from gendistill.compat.torchvision_ops import define_missing_torchvision_ops

    assert define_missing_torchvision_ops() is False  # already applied by conftest's prepare_process, or not needed
