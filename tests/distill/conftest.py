"""Fixtures shared by the distillation tests."""

import pytest


@pytest.fixture(scope="module")
def tiny_flow_model():
    from tiny_pipelines import tiny_sd3_pipeline

    from gendistill.backends.text_to_image import TextToImageModel

    return TextToImageModel(tiny_sd3_pipeline(seed=0))
