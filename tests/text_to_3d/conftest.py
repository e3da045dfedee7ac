import pytest

from tiny_pipelines import tiny_sd_pipeline


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline saved to a folder (16x16 images), one per test module."""
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_sd_pipeline(folder)
    return folder
