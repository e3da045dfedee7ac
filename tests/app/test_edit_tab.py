"""The demo's Edit tab through its API endpoints (gradio_client), on the tiny teacher."""

from __future__ import annotations

import pytest

NEEDS_GRADIO = "the demo tests need gradio and gradio_client: pip install -e '.[demo]'"
pytest.importorskip("gradio", reason=NEEDS_GRADIO)
pytest.importorskip("gradio_client", reason=NEEDS_GRADIO)
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from gendistill.app.edit_jobs import image_tensor, parse_edit_settings  # noqa: E402
from gendistill.errors import UserError  # noqa: E402


def test_a_shapes_render_then_an_edit_shows_before_after_and_the_mask(client, tmp_path):
    render, source_prompt = client.predict(caption="a red cube", azimuth=30, api_name="/shapes_source")
    assert Image.open(render).size == (64, 64) and source_prompt == "a red cube"
    edited, before_after, mask, status, files = client.predict(
        image=handle_file(render), prompt="a blue cube", source_prompt=source_prompt, method="lusd", iterations=2,
        api_name="/edit")
    assert Image.open(edited).size == (64, 64)  # the image's own size, not the tiny model's 16x16
    assert Image.open(before_after).width > 3 * 64 and Image.open(mask).size == (64, 64)
    assert "**Done**: lusd, 2 iterations" in status and "'cube'" in status
    assert {f.rsplit("/", 1)[-1] for f in files} >= {"edited.png", "before_after.png", "mask.png", "metrics.json"}


def test_bad_edit_inputs_are_answered_in_one_line(client):
    render, _ = client.predict(caption="a red cube", azimuth=0, api_name="/shapes_source")
    with pytest.raises(AppError, match="target prompt is empty"):
        client.predict(image=handle_file(render), prompt=" ", source_prompt="", method="lusd", iterations=2,
                       api_name="/edit")
    with pytest.raises(AppError, match="not in the list of choices"):  # gradio checks the radio itself
        client.predict(image=handle_file(render), prompt="a blue cube", source_prompt="", method="magic",
                       iterations=2, api_name="/edit")
    with pytest.raises(AppError, match="greater than maximum"):  # gradio checks the slider itself
        client.predict(caption="a red cube", azimuth=400, api_name="/shapes_source")


def test_settings_and_images_are_checked_without_a_server():
    assert parse_edit_settings("a blue cube", None, "dds", 5).source_prompt == ""
    with pytest.raises(UserError, match="iterations"):
        parse_edit_settings("a blue cube", "", "dds", 0)
    with pytest.raises(UserError, match="upload an image"):
        image_tensor(None)
    assert image_tensor(Image.new("RGBA", (5, 4), (255, 0, 0, 255))).shape == (3, 4, 5)
