"""The demo's text-to-3D work without the page: its config is the command's, the splats framed for the viewer,
the files it shows and offers, and (with the nerf extra) a NeRF run shown as its mesh. No gradio needed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from gendistill.app.scene_view import (WORLD_TO_VIEWER, framed_for_viewer, object_centre_and_radius,
                                       quaternion_product, rotation_to_quaternion, target_radius)
from gendistill.app.text_to_3d_jobs import (METHODS, NERF_MISSING, PRESETS_DIR, VIEWER_COPY, Text3DSettings,
                                            downloads, nerf_available, parse_settings, text3d_config, viewed_file)
from gendistill.errors import UserError
from gendistill.render.gaussians import init_from_sphere
from gendistill.render.ply import save_ply
from gendistill.jobs.text_to_3d.config import load_text3d_config


@pytest.mark.parametrize("method", METHODS)
def test_the_demo_runs_the_commands_config_for_each_method(method, tmp_path):
    settings = Text3DSettings("a red cube", method, "gaussians", 7)
    config = text3d_config(settings, tmp_path / "teacher")
    # what `gendistill text-to-3d --config configs/text-to-3d/shapes-<method>.yaml --set ...` builds
    command = load_text3d_config(PRESETS_DIR / f"shapes-{method}.yaml",
                                 [f"model={tmp_path / 'teacher'}", "scene.kind=gaussians", "iterations=7"])
    assert config.method.KIND == method and config.iterations == 7 and config.model == str(tmp_path / "teacher")
    assert dataclasses.replace(config, progress=True) == command


def quaternion_matrix(q: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).view(-1, 3, 3)


def covariances(params) -> torch.Tensor:
    r = quaternion_matrix(params.quats)
    return r @ torch.diag_embed(torch.exp(2 * params.log_scales)) @ r.transpose(1, 2)


def test_framing_moves_rotates_and_scales_every_gaussian_alike():
    params = init_from_sphere(400, 0.7, torch.Generator().manual_seed(0), sh_degree=1, opacity=0.5)
    with torch.no_grad():
        params.means.add_(torch.tensor([0.3, -0.2, 0.1]))
        params.quats.copy_(torch.randn(400, 4, generator=torch.Generator().manual_seed(1)))
    framed = framed_for_viewer(params)
    centre, radius = object_centre_and_radius(params)
    scale = target_radius() / radius
    rot = WORLD_TO_VIEWER
    assert torch.allclose(framed.means, (params.means - centre) @ rot.T * scale, atol=1e-5)
    assert torch.allclose(covariances(framed), scale**2 * rot @ covariances(params) @ rot.T, atol=1e-6)
    assert object_centre_and_radius(framed)[1] == pytest.approx(target_radius(), rel=1e-4)
    assert torch.equal(framed.sh0, params.sh0) and torch.equal(framed.opacity_logits, params.opacity_logits)
    assert torch.allclose(framed.means.mean(0), torch.zeros(3), atol=0.05)  # centred on the object
    # world z (up) becomes gsplat.js's -y (its y axis points down); the front, +x, faces the camera (-z)
    assert torch.allclose(rot @ torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, -1.0, 0.0]))
    assert torch.allclose(rot @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, -1.0]))
    q = rotation_to_quaternion(rot)
    assert torch.allclose(quaternion_matrix(quaternion_product(q, torch.tensor([1.0, 0, 0, 0])))[0], rot, atol=1e-6)


def test_the_view_shows_a_framed_copy_and_the_downloads_the_runs_files(tmp_path):
    save_ply(init_from_sphere(50, 0.8, torch.Generator().manual_seed(0), sh_degree=0), tmp_path / "scene.ply")
    for name in ("metrics.json", "turntable.gif", "config.yaml", "notes.txt"):
        (tmp_path / name).write_text("{}")
    shown = viewed_file(tmp_path, "gaussians")
    assert shown == tmp_path / VIEWER_COPY and shown.read_bytes()[:3] == b"ply"
    assert [Path(f).name for f in downloads(tmp_path)] == ["scene.ply", "turntable.gif", "metrics.json",
                                                           "config.yaml", "notes.txt"]
    assert viewed_file(tmp_path, "nerf") is None  # no mesh in this folder
    (tmp_path / "scene_mesh.ply").write_bytes(b"ply\n")
    assert viewed_file(tmp_path, "nerf") == tmp_path / "scene_mesh.ply"
    (tmp_path / "scene_mesh.glb").write_bytes(b"glTF")
    assert viewed_file(tmp_path, "nerf") == tmp_path / "scene_mesh.glb"  # y up: stands upright in the viewer


def test_nerf_without_nerfstudio_is_a_message_not_a_traceback(without_nerfstudio):
    assert not nerf_available()
    with pytest.raises(UserError, match=r"pip install gendistill\[nerf\]"):
        parse_settings("a red cube", "sds", "nerf", 3)
    assert "\n" not in NERF_MISSING


@pytest.mark.nerf
def test_nerf_with_nerfstudio_is_accepted():
    pytest.importorskip("nerfstudio")
    assert parse_settings("a red cube", "sds", "nerf", 3).representation == "nerf"


@pytest.mark.nerf
@pytest.mark.slow
def test_a_nerf_run_from_the_demo_is_shown_as_its_mesh(demo_models, tmp_path):
    pytest.importorskip("nerfstudio")
    from gendistill.jobs.text_to_3d.run import run_text_to_3d

    settings = parse_settings("a red cube", "sds", "nerf", 2)
    config = text3d_config(settings, demo_models["teacher"])
    small = dataclasses.replace(  # the preset's NeRF, with small exports for a test
        config, batch_size=1, turntable=dataclasses.replace(config.turntable, frames=2, size=16),
        scene=dataclasses.replace(config.scene, eval_samples=8,
                                  mesh=dataclasses.replace(config.scene.mesh, resolution=16)))
    steps = []
    run_text_to_3d(settings.prompt, small, tmp_path, progress=False, on_step=lambda s, im, loss: steps.append(s))
    shown = viewed_file(tmp_path, "nerf")
    assert steps == [0, 1] and shown is not None and shown.name.startswith("scene_mesh")
    assert json.loads((tmp_path / "metrics.json").read_text())["representation"] == "nerf"
    assert {"scene_mesh.ply", "turntable.gif"} <= {Path(f).name for f in downloads(tmp_path)}
