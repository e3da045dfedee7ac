"""The "Image to 3D" and "Edit 3D" tabs through gradio_client, with stand-in runs (their jobs are tested in
tests/image_to_3d and tests/edit_3d): inputs reach the job, the streamed steps and the files come back, and the
3D edit starts from the scene the same page made in the Text to 3D tab."""

from __future__ import annotations

from pathlib import Path

import pytest

NEEDS_GRADIO = "the demo tests need gradio and gradio_client: pip install -e '.[demo]'"

pytest.importorskip("gradio", reason=NEEDS_GRADIO)
pytest.importorskip("gradio_client", reason=NEEDS_GRADIO)
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from gendistill.app.models import Workspace  # noqa: E402
from gendistill.app.scene_jobs import latest_scene, parse_edit3d_settings, parse_image3d_settings  # noqa: E402
from gendistill.errors import UserError  # noqa: E402


def test_image_to_3d_from_a_shapes_render_returns_a_scene_and_turntable(client, demo_server):
    runner = demo_server[1].scene_runners["image_runner"]
    source = client.predict("a yellow cone", 45, api_name="/image_source")
    renders, loss, status, scene, turntable, files = client.predict(handle_file(source), True, 7,
                                                                     api_name="/image_to_3d")
    assert "Done" in status and "reference-view loss" in status
    assert Path(scene).suffix == ".ply" and Path(turntable).name == "turntable.gif"
    assert {Path(f).name for f in files} >= {"scene.ply", "turntable.gif", "metrics.json"}
    settings = runner.calls[-1]
    assert settings.reference_loss and settings.iterations == 7 and settings.image.is_file()


def test_edit_3d_needs_a_scene_of_this_page_then_edits_it(client, demo_server):
    from gradio_client import Client

    fresh = Client(demo_server[0], verbose=False)  # a page that has made no scene yet
    with pytest.raises(AppError, match="make a scene in the Text to 3D tab first"):
        fresh.predict("a green cube", "cube", True, 5, api_name="/edit_3d")
    client.predict("quick red cube", "sds", "gaussians", 3, api_name="/text_to_3d")
    with pytest.raises(AppError, match="not a word of the prompt"):
        client.predict("a green cube", "sphere", True, 5, api_name="/edit_3d")
    *_, status, scene, before_after, files = client.predict("a green cube", "cube", False, 5, api_name="/edit_3d")
    assert "unlocalised edit of 'cube'" in status and Path(before_after).name == "before_after.gif"
    settings = demo_server[1].scene_runners["edit3d_runner"].calls[-1]
    assert settings.scene.name == "scene.ply" and settings.scene.parent.name.startswith("text-to-3d-")
    assert (settings.prompt, settings.target, settings.localised) == ("a green cube", "cube", False)


def test_scene_settings_are_checked_and_the_newest_scene_wins(tmp_path):
    with pytest.raises(UserError, match="upload an image"):
        parse_image3d_settings(None, False, 10)
    with pytest.raises(UserError, match="iterations"):
        parse_image3d_settings(tmp_path / "x.png", False, 0)
    workspace = Workspace(tmp_path / "ws")
    assert latest_scene(workspace, "s") is None
    older, newer = (workspace.new_job_dir("s", "text-to-3d") / "scene.ply" for _ in range(2))
    older.write_text("a"), newer.write_text("b")
    import os

    os.utime(older, (1, 1))
    assert latest_scene(workspace, "s") == newer and latest_scene(workspace, "other") is None
    assert parse_edit3d_settings(newer, "A Blue, cube", "Cube", True, 3).target == "cube"


def test_the_3d_tabs_share_the_one_compute_queue(demo_server):
    demo = demo_server[1]
    compute = [fn for fn in demo.fns.values() if fn.api_name in ("image_to_3d", "edit_3d")]
    assert len(compute) == 2 and {(fn.concurrency_id, fn.concurrency_limit) for fn in compute} == {("compute", 1)}
