import sys
from pathlib import Path

from gendistill.compat import prepare_process

prepare_process()  # as the gendistill command does: before torch loads, and makes torchvision importable

import pytest  # noqa: E402
import torch  # noqa: E402

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
        if item.get_closest_marker("gpu") is not None:  # not keywords: they hold folder names (tests/gpu)
            item.add_marker(skip)


@pytest.fixture
def without_nerfstudio(monkeypatch):
    """This process as if the nerf extra were not installed: ``find_spec`` finds no nerfstudio and importing it
    fails (so the messages a user without it sees are tested in one environment that has it too)."""
    import importlib.util

    find_spec = importlib.util.find_spec

    def hidden(name, *args, **kwargs):
        return None if name.split(".")[0] == "nerfstudio" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    for name in [m for m in sys.modules if m.split(".")[0] == "nerfstudio"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nerfstudio", None)  # `import nerfstudio...` raises ModuleNotFoundError


@pytest.fixture
def fresh_accelerate():
    """accelerate's process-wide state forgotten before and after the test: a test that builds trainers in its own
    precision would otherwise be refused ("AcceleratorState has already been initialized")."""
    from precision_spy import fresh_accelerate_state

    fresh_accelerate_state()
    yield
    fresh_accelerate_state()
