"""Held-out 3D metrics: oracle identities, Gaussians fitted to the analytic object, and `gendistill eval-3d`."""

import json

import pytest
import torch

from gendistill.cli import main as cli_main
from gendistill.config import save_config
from gendistill.domains.shapes import Scene, camera_rays, orbit_cameras, render_batch, stack_cameras
from gendistill.errors import UserError
from gendistill.render.gaussians import init_from_points
from gendistill.render.ply import save_ply
from gendistill.jobs.text_to_3d.config import Text3DConfig
from gendistill.jobs.text_to_3d.evaluate3d import (colour_error, evaluate_gaussians, evaluate_renders, heldout_cameras,
                                              silhouette_iou)


def test_oracle_identities():
    cams = heldout_cameras()
    truth = render_batch([Scene("cube", "blue")] * 8, cams)
    assert torch.allclose(silhouette_iou(truth.alpha, truth.alpha), torch.ones(8, dtype=torch.float64))
    assert silhouette_iou(torch.zeros_like(truth.alpha), truth.alpha).max() == 0
    assert silhouette_iou(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)).item() == 1  # both empty
    assert colour_error(truth.rgb, truth.rgb, truth.alpha) == 0
    white = torch.ones_like(truth.rgb)
    assert colour_error(white, truth.rgb, truth.alpha) > 0.3
    result = evaluate_renders(truth.rgb, truth.alpha, "a blue cube", cams)
    assert result.iou == 1 and result.colour_error == 0 and result.prompt_accuracy is None and result.num_views == 8


def test_heldout_cameras_are_fixed_and_distinct():
    cams = heldout_cameras()
    assert len({(c.azimuth_deg, c.elevation_deg) for c in cams}) == 8 and cams == heldout_cameras()


def fitted_gaussians(scene: Scene, n_points: int = 4000):
    """Gaussians at the analytic surface: depth maps of 18 views back-projected, coloured by the render."""
    cams = [cam for elevation, start in ((-30.0, 0.0), (10.0, 20.0), (50.0, 40.0))
            for cam in orbit_cameras(6, elevation, start_azimuth_deg=start, width=48, height=48)]
    truth = render_batch([scene] * len(cams), cams, supersample=1)
    batch = stack_cameras(cams)
    origins, dirs = camera_rays(batch.viewmats, batch.Ks, batch.width, batch.height)
    points = origins[:, None, None, :] + truth.depth.permute(0, 2, 3, 1) * dirs
    hit = truth.alpha[:, 0] > 0.5
    points, colours = points[hit], truth.rgb.permute(0, 2, 3, 1)[hit]
    keep = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))[:n_points]
    return init_from_points(points[keep], colours[keep], sh_degree=0, opacity=0.95, scale_factor=0.6)


@pytest.fixture(scope="module")
def classifier():
    from gendistill.jobs.text_to_3d.evaluate3d import load_default_classifier

    return load_default_classifier()


def test_gaussians_fitted_to_the_object_score_well_and_an_other_prompt_scores_badly(classifier):
    params = fitted_gaussians(Scene("sphere", "red"))
    good, renders = evaluate_gaussians(params, "a red sphere", classifier)
    assert renders.shape == (8, 3, 64, 64)
    assert good.iou > 0.75 and good.colour_error < 0.05 and good.prompt_accuracy >= 0.5
    bad, _ = evaluate_gaussians(params, "a green torus", classifier)
    assert bad.iou < good.iou - 0.1 and bad.colour_error > 0.2 and bad.prompt_accuracy == 0


def write_run_dir(folder, prompt):
    folder.mkdir()
    save_ply(fitted_gaussians(Scene("cube", "yellow"), 2500), folder / "scene.ply")
    save_config(Text3DConfig(prompt=prompt), folder / "config.yaml")
    return folder


def test_eval_3d_command_prints_a_table_and_writes_json(tmp_path, capsys):
    folder = write_run_dir(tmp_path / "run", "a yellow cube")
    assert cli_main(["eval-3d", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "| silhouette IoU |" in printed and "| a yellow cube | 8 |" in printed
    result = json.loads((folder / "eval3d.json").read_text())
    assert result["iou"] > 0.75 and len(result["per_view_iou"]) == 8 and 0 <= result["prompt_accuracy"] <= 1


def test_eval_3d_user_errors(tmp_path, capsys):
    assert cli_main(["eval-3d", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    folder = write_run_dir(tmp_path / "run", "a castle on a hill")
    assert cli_main(["eval-3d", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shapes-world captions only" in err
    with pytest.raises(UserError, match="captions only"):
        evaluate_renders(torch.ones(1, 3, 8, 8), torch.ones(1, 1, 8, 8), "a castle", heldout_cameras()[:1])


def test_depth_error_is_zero_on_the_truth_and_the_offset_when_shifted():
    from gendistill.jobs.text_to_3d.evaluate3d import depth_error

    cams = heldout_cameras()
    truth = render_batch([Scene("torus", "purple")] * 8, cams)
    assert depth_error(truth.depth, truth.alpha, truth.depth, truth.alpha) == 0
    assert abs(depth_error(truth.depth + 0.25, truth.alpha, truth.depth, truth.alpha) - 0.25) < 1e-6
    assert depth_error(truth.depth, torch.zeros_like(truth.alpha), truth.depth, truth.alpha) is None
    result = evaluate_renders(truth.rgb, truth.alpha, "a purple torus", cams, depth=truth.depth - 0.5, floaters=3)
    assert abs(result.depth_error - 0.5) < 1e-6 and result.floaters == 3


def test_floaters_are_opaque_gaussians_outside_the_bounding_sphere():
    from gendistill.jobs.text_to_3d.evaluate3d import count_floaters

    points = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, -1.5, 0.0], [0.0, 0.0, 2.0]])
    params = init_from_points(points, torch.full_like(points, 0.5), opacity=0.5)
    with torch.no_grad():
        params.splats["opacities"][4] = torch.logit(torch.tensor(0.05))  # outside but nearly transparent
    assert count_floaters(params) == 2 and count_floaters(params, radius=0.5) == 3
