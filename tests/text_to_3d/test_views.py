"""Text-to-3D's training views: rig cameras, the configured view-prompt template, VSD's camera features,
and a non-shapes run that never imports the shapes domain."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gendistill.errors import UserError
from gendistill.render.cameras import Camera
from gendistill.jobs.text_to_3d.config import load_text3d_config
from gendistill.jobs.text_to_3d.views import (camera_features, check_view_prompts, resolve_view_prompts, training_cameras,
                                         training_prompts, uses_shapes_captions)

ROOT = Path(__file__).resolve().parents[2]
FRONT, SIDE, HIGH = Camera(0.0, 10.0), Camera(90.0, 10.0), Camera(0.0, 70.0)


@pytest.fixture
def folders(tmp_path):
    """A model folder gendistill made (gendistill.json) and one it did not (only model_index.json)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "model_index.json").write_text("{}")
    (ours / "gendistill.json").write_text(json.dumps({"guidance": 2.0}))
    return ours, theirs


def _config(prompt, *overrides):
    return dataclasses.replace(load_text3d_config(None, list(overrides)), prompt=prompt)


def test_auto_picks_the_shapes_template_for_gendistill_models_only(folders):
    ours, theirs = folders
    assert resolve_view_prompts("auto", str(ours)) == "shapes"
    assert resolve_view_prompts("auto", str(theirs)) == "suffix"
    assert resolve_view_prompts("auto", "owner/some-model") == "suffix"  # a hub id: never a shapes model
    assert resolve_view_prompts("suffix", str(ours)) == "suffix"
    assert resolve_view_prompts("shapes", str(theirs)) == "shapes"
    assert uses_shapes_captions(_config("a red cube", f"model={ours}"))
    assert not uses_shapes_captions(_config("a red cube", f"model={theirs}"))


def test_training_prompts_follow_the_template_and_the_view_dependent_flag(folders):
    ours, theirs = folders
    shapes = _config("A  Red Sphere, back view", f"model={ours}")
    assert training_prompts(shapes, [FRONT, SIDE]) == ["a red sphere, front view", "a red sphere, side view"]
    suffix = _config(" a chair ", f"model={theirs}")
    assert training_prompts(suffix, [FRONT, HIGH]) == ["a chair, front view", "a chair, overhead view"]
    forced = _config("a red sphere", f"model={theirs}", "cameras.view_prompts=shapes")
    assert training_prompts(forced, [SIDE]) == ["a red sphere, side view"]
    plain = [_config(p, f"model={m}", "cameras.view_dependent_prompts=false")
             for p, m in (("A Red Sphere", ours), (" a chair ", theirs))]
    assert [training_prompts(c, [FRONT])[0] for c in plain] == ["a red sphere", "a chair"]


def test_a_prompt_the_shapes_template_cannot_read_fails_early_in_one_line(folders):
    ours, theirs = folders
    check_view_prompts("a chair", _config("", f"model={theirs}"))
    check_view_prompts("a red cube", _config("", f"model={ours}"))
    with pytest.raises(UserError) as err:
        check_view_prompts("a chair", _config("", f"model={ours}"))
    message = str(err.value)
    assert "cannot read caption 'a chair'" in message and "cameras.view_prompts=suffix" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="must be one of"):
        load_text3d_config(None, ["cameras.view_prompts=bogus"])


def test_training_cameras_use_the_configured_rig_and_the_seeded_stream():
    config = load_text3d_config(None, ["cameras.distance=3", "cameras.fov_deg=50",
                                       "cameras.elevation_range_deg=[0, 30]"])
    cams = training_cameras(config, 4, torch.Generator().manual_seed(2), (24, 32))
    u = torch.rand(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64).tolist()
    assert cams == [Camera(360.0 * a, 30.0 * e, 3.0, 50.0, width=32, height=24) for a, e in u]


def test_camera_features_are_flattened_camera_to_world_matrices():
    features = camera_features([FRONT, SIDE])
    assert features.shape == (2, 16)
    torch.testing.assert_close(features[1].view(4, 4), SIDE.camtoworld)
    torch.testing.assert_close(features[:, 12:], torch.tensor([[0.0, 0, 0, 1]] * 2))
    torch.testing.assert_close(features[0].view(4, 4)[:3, 3], FRONT.position)


def test_a_non_shapes_run_never_imports_the_shapes_domain(tmp_path):
    """The job module, "a chair"'s prompts and cameras on a model that is not a shapes model (suffix), and the
    outputs of its scene (no evaluation), in a fresh interpreter: nothing imports gendistill.domains."""
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path

        import torch
        from gendistill.jobs.text_to_3d import run
        from gendistill.jobs.text_to_3d.config import load_text3d_config
        from gendistill.jobs.text_to_3d.outputs import write_outputs
        from gendistill.jobs.text_to_3d import views as run_views
        from gendistill.jobs.text_to_3d.views import make_view_prompter, resolve_view_prompts, training_prompts

        torch.set_num_threads(1)
        config = load_text3d_config(None, ["model={tmp_path / 'pipe'}", "scene.init.num_points=40", "turntable.frames=2",
                                           "turntable.size=16", "prompt=a chair"])
        run.validate("a chair", config)
        assert resolve_view_prompts(config.cameras.view_prompts, config.model) == "suffix"
        prompter = make_view_prompter("suffix")
        cams = run_views.training_cameras(config, 2, torch.Generator().manual_seed(0), (16, 16))
        assert training_prompts(config, cams) == [prompter.prompt("a chair", c) for c in cams]
        assert training_prompts(config, cams)[0].startswith("a chair, ")
        scene = config.scene.build(torch.Generator().manual_seed(0), torch.device("cpu"), config.iterations)
        result = write_outputs(config, scene, [{{"step": 0, "loss": 1.0}}], 0, 0.1, Path("{tmp_path / 'out'}"))
        assert result.evaluation is None
        loaded = sorted(m for m in sys.modules if m.startswith("gendistill.domains"))
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    assert not (tmp_path / "out" / "eval3d.json").exists() and (tmp_path / "out" / "heldout.png").is_file()
