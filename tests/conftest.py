import sys
from pathlib import Path

import pytest
import torch

import gendistill  # noqa: F401  (first: makes torchvision importable under CPU torch)

sys.path.insert(0, str(Path(__file__).parent))

# The tests are dominated by small ops, where a second torch thread costs more than it gives (measured
# 3-10x slower on a busy 2-core machine); a run of the whole suite is faster single-threaded.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
