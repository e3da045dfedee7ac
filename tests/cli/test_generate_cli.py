"""`gendistill generate`: writes a grid, documents every option, and answers user errors in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gendistill.cli import main
from tiny_pipelines import tiny_sd_pipeline


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(folder, seed=0)
    return folder


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_grid_and_reports_cost(sd_folder, tmp_path, capsys):
    out_png = tmp_path / "grid.png"
    code, out, _ = run(capsys, "generate", "--model", str(sd_folder), "--prompt", "a red cube", "--steps", "3",
                       "--num-images", "4", "--seed", "1", "--out", str(out_png))
    assert code == 0
    assert "NFE 6 per image" in out and "s per image" in out  # 3 steps x 2 (guided)
    image = Image.open(out_png)
    assert image.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)


def test_hybrid_generate_counts_both_models(sd_folder, tmp_path, capsys):
    code, out, _ = run(capsys, "generate", "--model", str(sd_folder), "--base-model", str(sd_folder),
                       "--prompt", "a cube", "--base-steps", "1", "--steps", "2", "--sampler", "consistency",
                       "--guidance", "0", "--base-guidance", "3", "--num-images", "2", "--out", str(tmp_path / "h.png"))
    assert code == 0 and "NFE 3 per image" in out  # base: 1 guided step (2) + student: the other step (1)


@pytest.mark.parametrize("args,needle", [
    (["--sampler", "lms"], "unknown sampler 'lms'; choose one of: auto, consistency, ddim, dpmpp_2m, euler, heun"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--guidance", "-1"], "guidance must be >= 0"),
    (["--eta", "0.5", "--sampler", "heun"], "eta needs a stochastic sampler"),
    (["--base-steps", "2"], "base-steps needs --base-model"),
    (["--base-model", ".", "--base-steps", "3", "--steps", "3"], "base-steps must be less than steps (3)"),
])
def test_bad_values_are_one_line_errors(sd_folder, tmp_path, capsys, args, needle):
    code, _, err = run(capsys, "generate", "--model", str(sd_folder), "--prompt", "x", "--out",
                       str(tmp_path / "x.png"), *args)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1


def test_missing_and_non_pipeline_models(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", "x.png")
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "generate", "--model", str(tmp_path), "--prompt", "x", "--out", "x.png")
    assert code == 2 and "not a diffusers pipeline folder" in err


def test_console_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gendistill", "generate", "--model", str(tmp_path), "--prompt", "x",
                           "--out", "x.png"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path} is not a diffusers pipeline folder (no "
                                                "model_index.json); give a folder saved with save_pretrained or a "
                                                "hub id like owner/name"]


def test_argparse_errors_are_one_line(capsys):
    code, _, err = run(capsys, "generate", "--prompt", "x")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--model" in err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--prompt", "--negative-prompt", "--steps", "--sampler", "--eta", "--guidance",
                   "--seed", "--num-images", "--base-model", "--base-steps", "--out", "--scheduler", "--karras",
                   "--show-targets"):
        assert option in text


def test_show_targets_writes_each_steps_x0_as_a_row(sd_folder, tmp_path, capsys):
    targets = tmp_path / "targets.png"
    code, out, _ = run(capsys, "generate", "--model", str(sd_folder), "--prompt", "a red cube", "--steps", "3",
                       "--num-images", "2", "--out", str(tmp_path / "g.png"), "--show-targets", str(targets))
    assert code == 0 and "x0 predictions of 3 steps (one row each) x 2 images" in out
    grid = np.asarray(Image.open(targets)).astype(float)
    assert grid.shape == (3 * 18 + 2, 2 * 18 + 2, 3)
    rows = [grid[2 + 18 * r:18 + 18 * r, 2:18] for r in range(3)]
    assert np.abs(rows[0] - rows[2]).mean() > 1  # the prediction changes along the trajectory
    final = np.asarray(Image.open(tmp_path / "g.png")).astype(float)[2:18, 2:18]
    assert np.abs(rows[2] - final).max() <= 1  # the last step's x0 is the image (DDIM ends on it)


def test_scheduler_option_swaps_the_scheduler(sd_folder, tmp_path, capsys):
    code, out, _ = run(capsys, "generate", "--model", str(sd_folder), "--prompt", "a red cube", "--steps", "3",
                       "--scheduler", "UniPCMultistepScheduler", "--out", str(tmp_path / "u.png"))
    assert code == 0 and "with UniPCMultistepScheduler" in out


def test_one_image_is_written_as_itself_without_a_frame(sd_folder, tmp_path, capsys):
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    common = ["generate", "--model", str(sd_folder), "--prompt", "a red cube", "--steps", "2", "--seed", "3"]
    assert run(capsys, *common, "--num-images", "1", "--out", str(one))[0] == 0
    assert run(capsys, *common, "--num-images", "2", "--out", str(two))[0] == 0
    image = np.asarray(Image.open(one))
    assert image.shape == (16, 16, 3)  # the pipeline's own size: no one-cell grid, no white frame
    assert np.array_equal(image, np.asarray(Image.open(two))[2:18, 2:18])  # the grid's first cell, same seed


# what stock diffusers/transformers print on every run of a pipeline like ours, and must not reach our users
NOTICES = ("requires torchvision", "falling back to", "safety checker", "safety_checker", "steps_offset",
           "FutureWarning", "DeprecationWarning", "deprecated")


def test_generate_prints_no_third_party_notices(tmp_path):
    folder = tmp_path / "sd"
    tiny_sd_pipeline(folder, seed=0, scheduler=dict(steps_offset=0))  # the steps_offset notice's trigger
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "requires_safety_checker": True}))  # and this one's
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "gendistill", "generate", "--model", str(folder), "--prompt", "a cube",
                           "--steps", "2", "--num-images", "1", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = [n for n in NOTICES if n in proc.stderr]
    assert not found, proc.stderr[-3000:]


def test_notice_filters_keep_real_warnings():
    import logging

    from gendistill.compat.notices import silence_known_notices

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    silence_known_notices()
    logger, collect = logging.getLogger("transformers.utils.import_utils"), Collect()
    logger.addHandler(collect)  # transformers' loggers do not propagate to the root, so caplog sees nothing
    try:
        logger.warning("`XImageProcessor` requires torchvision (not installed); falling back to `XImageProcessorPil`")
        logger.warning("something real went wrong")
    finally:
        logger.removeHandler(collect)
    assert collect.messages == ["something real went wrong"]


def test_negative_guidance_runs_in_one_call_per_step_on_the_shipped_multi_cfg_student(sd_folder, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    common = ["generate", "--model", "shapes-multi-cfg", "--prompt", "a red cube", "--negative-prompt",
              "a blue sphere", "--steps", "2", "--num-images", "1", "--guidance", "2"]
    code, out, _ = run(capsys, *common, "--negative-guidance", "1.5", "--out", str(a))
    assert code == 0 and "NFE 2 per image" in out  # 2 steps, prompt and negative in one call each
    assert run(capsys, *common, "--out", str(b))[0] == 0
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))  # the scale is used
    code, _, err = run(capsys, "generate", "--model", str(sd_folder), "--prompt", "a red cube",
                       "--negative-guidance", "1", "--out", str(tmp_path / "c.png"))
    assert code == 2 and "needs a multi-CFG student" in err and len(err.strip().splitlines()) == 1
