"""The demo driven through its named API endpoints with gradio_client, as a script or another app would."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

NEEDS_GRADIO = "the demo tests need gradio and gradio_client: pip install -e '.[demo]'"
pytest.importorskip("gradio", reason=NEEDS_GRADIO)
pytest.importorskip("gradio_client", reason=NEEDS_GRADIO)
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from gendistill.app.models import (ModelCatalog, ModelEntry, Workspace, check_number, check_prompt,  # noqa: E402
                                   discover_models)
from gendistill.app.text_to_3d_jobs import VIEWER_COPY  # noqa: E402
from gendistill.backends.student_card import StudentCard  # noqa: E402
from gendistill.render.ply import load_ply  # noqa: E402
from gendistill.errors import UserError  # noqa: E402

GENERATE = dict(negative_prompt="", model="student-2step", steps=2, guidance=0.0, sampler="auto", seed=0,
                num_images=2, diversity=False, teacher_steps=3)


def generate(client, prompt="a red cube", **overrides):
    return client.predict(prompt=prompt, **{**GENERATE, **overrides}, api_name="/generate")


def images_of(gallery) -> list[Image.Image]:
    return [Image.open(item["image"]) for item in gallery]


# --- few-step generation ------------------------------------------------------------------------------


def test_generate_returns_both_models_images_with_cost(client):
    teacher, teacher_info, images, info = generate(client, num_images=2)
    assert [im.size for im in images_of(images)] == [(16, 16)] * 2
    assert [im.size for im in images_of(teacher)] == [(16, 16)] * 2
    assert "student-2step" in info and "2 steps" in info and "NFE 2**" in info and "s** per image" in info
    assert "teacher" in teacher_info and "3 steps" in teacher_info and "NFE 6**" in teacher_info  # CFG: 2 a step


def test_same_seed_same_images_and_seed_changes_them(client):
    first = [list(im.getdata()) for im in images_of(generate(client, seed=7, num_images=1)[2])]
    again = [list(im.getdata()) for im in images_of(generate(client, seed=7, num_images=1)[2])]
    other = [list(im.getdata()) for im in images_of(generate(client, seed=8, num_images=1)[2])]
    assert first == again and first != other


def test_teacher_column_is_reused_when_only_the_model_changes(client):
    teacher, teacher_info, _, info = generate(client, prompt="a blue torus", model="student-2step")
    teacher_again, teacher_info_again, _, info_teacher = generate(client, prompt="a blue torus", model="teacher")
    assert teacher_info_again == teacher_info  # the same run (its timing included), not a new one
    assert [list(im.getdata()) for im in images_of(teacher)] == [list(im.getdata()) for im in images_of(teacher_again)]
    assert "**teacher** · 2 steps" in info_teacher and "NFE 2**" in info_teacher  # guidance 0: no CFG batch


def test_diversity_toggle_runs_the_teacher_first(client):
    _, _, images, info = generate(client, steps=3, diversity=True, num_images=1, teacher_steps=0)
    assert len(images) == 1
    # one unguided teacher step (1 evaluation: guidance 1 keeps the teacher's diversity) + two student steps
    assert "1 teacher step + 2 steps" in info and "NFE 3**" in info


def test_teacher_column_can_be_turned_off(client):
    teacher, teacher_info, images, _ = generate(client, teacher_steps=0, num_images=1)
    assert teacher == [] and "off" in teacher_info and len(images) == 1


@pytest.mark.parametrize("overrides, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt="a red cube " * 20), "at most 200"),
    (dict(negative_prompt="x" * 201), "at most 200"),
    (dict(steps=0), r"steps must be in \[1, 50\], got 0"),
    (dict(steps=51), r"steps must be in \[1, 50\]"),
    (dict(steps=2.5), "steps must be a whole number"),
    (dict(guidance=-1.0), r"guidance must be in \[0, 20\]"),
    (dict(num_images=9), r"number of images must be in \[1, 4\]"),
    (dict(seed=-3), "seed must be in"),
    (dict(diversity=True, steps=1), "at least 2 steps"),
    (dict(model="/etc/passwd"), "unknown model '/etc/passwd'; choose one of: teacher, student-2step"),
    (dict(model="../teacher"), "unknown model"),
    (dict(sampler="rk4"), "unknown sampler 'rk4'; choose one of: auto, euler"),
    (dict(diversity="yes"), "diversity must be true or false"),
    (dict(negative_guidance=1.0), "negative guidance needs a multi-CFG student"),
    (dict(negative_guidance=-1.0), r"negative guidance must be in \[0, 20\]"),
])
def test_bad_inputs_come_back_as_errors(client, overrides, message):
    prompt = overrides.pop("prompt", "a red cube")
    with pytest.raises(AppError, match=message):
        generate(client, prompt=prompt, **overrides)


# --- text to 3D -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_text_to_3d_returns_a_splat_ply_turntable_and_renders(client):
    job = client.submit("a red cube", "sds", "gaussians", 3, api_name="/text_to_3d")
    renders, loss, status, ply, turntable, files = job.result(timeout=240)
    # the view shows the splats framed for gsplat.js; the downloads hold the run's own scene.ply
    assert Path(ply).name == VIEWER_COPY and Path(ply).read_bytes().startswith(b"ply\n")
    assert b"property float f_dc_0" in Path(ply).read_bytes()[:2000]  # Gaussian splats, 3DGS layout
    assert Image.open(turntable).format == "GIF" and Image.open(turntable).n_frames > 1
    assert Image.open(renders).size[0] >= 16
    assert [Path(f).name for f in files][:2] == ["scene.ply", "turntable.gif"] and VIEWER_COPY not in str(files)
    assert {Path(f).name for f in files} >= {"metrics.json", "config.yaml", "heldout.png"}
    assert len(load_ply(ply)) == len(load_ply(next(f for f in files if f.endswith("scene.ply"))))
    assert json.loads(Path(next(f for f in files if f.endswith("metrics.json"))).read_text())["steps"] == 3
    assert [row[0] for row in loss["data"]] == [0, 1, 2]
    assert "Done" in status


def test_text_to_3d_streams_and_stop_returns_what_was_made(client, demo_server):
    job = client.submit("slow red cube", "csd", "gaussians", 2000, api_name="/text_to_3d")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(job.outputs()) >= 2, "no intermediate renders were streamed"
    assert "Running" in job.outputs()[-1][2]
    assert client.predict(api_name="/stop") == "stopping…"
    renders, loss, status, ply, turntable, files = job.result(timeout=30)
    assert "Stopped" in status and ply is None and turntable is None
    assert Image.open(renders).size == (4 * 8 + 5 * 2, 8 + 2 * 2)  # the last step's 4 renders in a grid
    assert len(loss["data"]) >= 2
    assert client.predict(api_name="/stop") == "nothing is running"


@pytest.mark.slow
def test_stopping_a_real_run_shows_the_scene_it_had(client):
    job = client.submit("a blue sphere", "sds", "gaussians", 2000, api_name="/text_to_3d")
    deadline = time.monotonic() + 120
    while not any("Running" in out[2] for out in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.predict(api_name="/stop") == "stopping…"
    renders, loss, status, ply, turntable, files = job.result(timeout=120)
    assert "Stopped" in status and "scene so far" in status
    metrics = json.loads(Path(next(f for f in files if f.endswith("metrics.json"))).read_text())
    assert metrics["stopped"] is True and 1 <= metrics["steps"] < 2000 and len(loss["data"]) >= 1
    assert Path(ply).name == VIEWER_COPY and Image.open(turntable).format == "GIF"


@pytest.mark.parametrize("args, message", [
    (("", "sds", "gaussians", 3), "prompt is empty"),
    (("a red cube", "sds", "gaussians", 0), r"iterations must be in \[1, 2000\], got 0"),
    (("a red cube", "sds", "gaussians", 100_000), r"iterations must be in \[1, 2000\]"),
    (("a red cube", "dds", "gaussians", 3), "unknown method 'dds'; choose one of: sds, vsd, csd, npg"),
])
def test_text_to_3d_bad_inputs_come_back_as_errors(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/text_to_3d")


def test_the_score_model_is_the_teacher_unless_the_page_picks_a_student(client, demo_server, demo_models):
    runner = demo_server[2]
    client.predict("quick cube", "sds", "gaussians", 3, api_name="/text_to_3d")
    assert runner.model_paths[-1] == demo_models["teacher"]
    client.predict("quick cube", "sds", "gaussians", 3, "student-2step", api_name="/text_to_3d")
    assert runner.model_paths[-1] == demo_models["student-2step"]
    with pytest.raises(AppError, match="unknown model 'nope'"):
        client.predict("quick cube", "sds", "gaussians", 3, "nope", api_name="/text_to_3d")


def test_a_nerf_request_without_nerfstudio_comes_back_as_how_to_install_it(client, without_nerfstudio):
    with pytest.raises(AppError, match=r"needs nerfstudio.*pip install gendistill\[nerf\]"):
        client.predict("a red cube", "sds", "nerf", 3, api_name="/text_to_3d")


# --- what the server exposes ------------------------------------------------------------------------------


def test_server_serves_no_model_files_and_lists_only_names(demo_server, demo_models, client):
    url = demo_server[0]
    assert url.startswith("http://127.0.0.1:")
    for path in (demo_models["teacher"] / "model_index.json", Path("/etc/passwd")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert err.value.code in (403, 404)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/text_to_3d", "/stop"} <= set(api)
    model_param = next(p for p in api["/generate"]["parameters"] if p["parameter_name"] == "model")
    assert str(demo_models["teacher"]) not in json.dumps(model_param)


def test_one_compute_job_at_a_time_and_a_bounded_queue(demo_server):
    from gendistill.app.demo import QUEUE_SIZE

    demo = demo_server[1]
    assert demo._queue.max_size == QUEUE_SIZE and demo._queue.default_concurrency_limit == 1
    compute = [fn for fn in demo.fns.values() if fn.api_name in ("generate", "text_to_3d")]
    assert len(compute) == 2 and {(fn.concurrency_id, fn.concurrency_limit) for fn in compute} == {("compute", 1)}


# --- pieces -----------------------------------------------------------------------------------------------


def test_discovery_finds_folders_and_picks_the_teacher(demo_models, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    entries, teacher = discover_models(tmp_path, [str(p) for p in demo_models.values()])
    assert [e.name for e in entries] == ["teacher", "student-2step"] and teacher == "teacher"
    catalog = ModelCatalog(entries, teacher)
    assert catalog.choices()[0] == ("student-2step (dmd, 2 steps)", "student-2step")
    with pytest.raises(UserError, match="not a diffusers pipeline folder"):
        discover_models(None, [str(tmp_path / "not-a-model")])
    with pytest.raises(UserError, match="unknown model"):
        catalog.entry(str(demo_models["teacher"]))


def test_discovery_skips_models_whose_images_are_not_pictures(demo_models, tmp_path):
    """A depth branch (gendistill.json "output": "depth") is no model for the generation tab."""
    import shutil

    shutil.copytree(demo_models["teacher"], tmp_path / "depth-branch")
    card = json.loads((tmp_path / "depth-branch" / "gendistill.json").read_text()) if (
        tmp_path / "depth-branch" / "gendistill.json").is_file() else {}
    (tmp_path / "depth-branch" / "gendistill.json").write_text(json.dumps({**card, "output": "depth"}))
    shutil.copytree(demo_models["teacher"], tmp_path / "teacher")
    assert [e.name for e in discover_models(tmp_path)[0]] == ["teacher"]


def test_the_page_starts_on_the_dmd2_student(tmp_path):
    def entry(name, **card):
        return ModelEntry(name, tmp_path / name, StudentCard(**card))

    catalog = ModelCatalog([entry("shapes-teacher", guidance=2.0), entry("shapes-lcm-4step", recipe="lcm", steps=4),
                            entry("shapes-progressive-1step", recipe="progressive", steps=1),
                            entry("shapes-dmd2-1step", recipe="dmd2", steps=1)], "shapes-teacher")
    assert catalog.default_choice() == "shapes-dmd2-1step"
    assert [name for _, name in catalog.choices()][-1] == "shapes-teacher"
    assert ModelCatalog([entry("shapes-teacher")], "shapes-teacher").default_choice() == "shapes-teacher"


def test_input_checks_and_session_folders(tmp_path):
    assert check_prompt("  a red cube ") == "a red cube"
    assert check_number("steps", 4.0, 1, 50, integer=True) == 4
    for value in (4.5, float("nan"), "4", True, None):
        with pytest.raises(UserError):
            check_number("steps", value, 1, 50, integer=True)
    workspace = Workspace(tmp_path)
    job = workspace.new_job_dir("../../etc", "generate")
    assert job.parent.parent == tmp_path and ".." not in job.parts
    workspace.drop_session("../../etc")
    assert not job.exists() and tmp_path.exists()


def test_demo_command_options():
    import argparse

    from gendistill.commands import demo_cmd

    parser = argparse.ArgumentParser()
    demo_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["demo", "--model", "a", "--model", "b"])
    assert (args.host, args.port, args.model, args.share) == ("127.0.0.1", 7860, ["a", "b"], False)
