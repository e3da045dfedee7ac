"""`gendistill fit-nerf` and `gendistill convert-nerf`: outputs on tiny runs, and one-line errors with exit 2."""

import json

import pytest

from gendistill.cli import main

TINY_FIT = ["--set", "views=4", "--set", "holdout_views=2", "--set", "resolution=12", "--set", "fit.rays_per_step=64",
            "--set", "fit.num_samples=8"]
TINY_CONVERT = ["--set", "views=3", "--set", "holdout_views=2", "--set", "resolution=12",
                "--set", "pvd.points_per_step=64", "--set", "pvd.rays_per_step=16", "--set", "pvd.num_samples=8",
                "--set", "splats.num_gaussians=50", "--set", "splats.candidate_rays=64", "--set", "splats.num_samples=8",
                "--set", "fit.rays_per_step=32", "--set", "fit.num_samples=8"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_architecture_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "fit-nerf", "--prompt", "a red cube", "--architecture", "voxels", "--out", str(tmp_path))
    assert_one_line_error(code, err, "unknown architecture 'voxels'", "hashgrid", "tensorf-vm")
    code, _, err = run(capsys, "convert-nerf", "--teacher", str(tmp_path / "x.safetensors"), "--to", "voxels",
                       "--out", str(tmp_path))
    assert_one_line_error(code, err, "'voxels'", "gaussians", "mlp")


def test_teacher_that_is_not_a_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    junk = tmp_path / "field.safetensors"
    junk.write_bytes(b"\x00" * 64)
    code, _, err = run(capsys, "convert-nerf", "--teacher", str(junk), "--to", "mlp", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "is not a safetensors file")
    code, _, err = run(capsys, "convert-nerf", "--teacher", str(tmp_path / "missing.safetensors"), "--to", "mlp",
                       "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "no radiance field checkpoint")


def test_fit_nerf_needs_exactly_one_source(tmp_path, capsys):
    code, _, err = run(capsys, "fit-nerf", "--out", str(tmp_path))
    assert_one_line_error(code, err, "--prompt", "--data")
    code, _, err = run(capsys, "fit-nerf", "--prompt", "a red blob", "--out", str(tmp_path))
    assert code == 2 and "blob" in err or "caption" in err


def test_missing_nerfstudio_says_how_to_install(tmp_path, capsys, without_nerfstudio):
    code, _, err = run(capsys, "fit-nerf", "--prompt", "a red cube", "--steps", "1", *TINY_FIT, "--out", str(tmp_path))
    assert_one_line_error(code, err, "gendistill[nerf]")


@pytest.mark.nerf
def test_fit_then_convert_everywhere(tmp_path, capsys):
    pytest.importorskip("nerfstudio")
    from gendistill.render.nerf import load_field
    from gendistill.render.ply import load_ply

    fitted = tmp_path / "fit"
    code, out, err = run(capsys, "fit-nerf", "--prompt", "a red cube", "--architecture", "tensorf-vm", "--steps", "5",
                         *TINY_FIT, "--out", str(fitted))
    assert code == 0, err
    assert "held-out PSNR" in out
    metrics = json.loads((fitted / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["holdout_views"] == 2 and metrics["psnr_holdout"] > 0
    assert (fitted / "renders.png").is_file() and (fitted / "config.yaml").is_file()
    assert load_field(fitted / "field.safetensors").config.architecture == "tensorf-vm"
    assert (fitted / "curves.png").is_file() and (fitted / "checkpoints" / "step-0000005").is_dir()
    code, out, err = run(capsys, "fit-nerf", "--prompt", "a red cube", "--architecture", "tensorf-vm", "--steps", "7",
                         *TINY_FIT, "--resume", "--out", str(fitted))
    assert code == 0, err
    assert "resumed from step-0000005" in out and json.loads((fitted / "metrics.json").read_text())["steps"] == 7

    code, out, err = run(capsys, "convert-nerf", "--teacher", str(fitted / "field.safetensors"), "--to", "tensorf-cp",
                         "--focus", "--steps", "3", *TINY_CONVERT, "--out", str(tmp_path / "cp"))
    assert code == 0, err
    assert load_field(tmp_path / "cp" / "field.safetensors").config.architecture == "tensorf-cp"
    assert "psnr_vs_teacher" in json.loads((tmp_path / "cp" / "metrics.json").read_text())

    code, _, err = run(capsys, "convert-nerf", "--teacher", str(fitted / "field.safetensors"), "--to", "gaussians",
                       "--steps", "2", *TINY_CONVERT, "--out", str(tmp_path / "gs"))
    assert code == 0, err
    assert len(load_ply(tmp_path / "gs" / "scene.ply")) == 50

    code, _, err = run(capsys, "convert-nerf", "--teacher", str(tmp_path / "gs" / "scene.ply"), "--to", "mlp",
                       "--steps", "2", *TINY_CONVERT, "--out", str(tmp_path / "back"))
    assert code == 0, err
    assert load_field(tmp_path / "back" / "field.safetensors").config.architecture == "mlp"
    code, _, err = run(capsys, "convert-nerf", "--teacher", str(tmp_path / "gs" / "scene.ply"), "--to", "gaussians",
                       *TINY_CONVERT, "--out", str(tmp_path / "gs2"))
    assert_one_line_error(code, err, "already Gaussians")
