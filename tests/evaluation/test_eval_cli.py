"""`gendistill eval` prints the table and writes every metric as JSON."""

import json

from gendistill.cli import main
from tiny_pipelines import tiny_sd_pipeline

METRICS = {"prompt_accuracy", "shape_accuracy", "colour_accuracy", "fid", "diversity", "nfe", "images_per_second",
           "ms_per_image", "steps", "sampler", "guidance", "num_images"}


def test_eval_writes_every_metric(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_sd_pipeline(folder)
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(folder), "--steps", "1", "2", "--num-samples", "6", "--guidance", "3",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| prompt acc |" in printed and printed.count("| tiny |") == 2
    rows = json.loads(out.read_text())["rows"]
    assert [r["steps"] for r in rows] == [1, 2]
    for row in rows:
        assert METRICS <= set(row)
        assert 0 <= row["prompt_accuracy"] <= 1 and row["fid"] >= 0 and row["nfe"] == 2 * row["steps"]
        assert row["sampler"] == "DDIMScheduler"  # auto ran the tiny pipeline's own scheduler


def test_eval_rejects_too_few_samples(tmp_path, capsys):
    folder = tmp_path / "tiny"
    tiny_sd_pipeline(folder)
    assert main(["eval", "--model", str(folder), "--num-samples", "1"]) == 2
    assert "num-samples must be at least 2" in capsys.readouterr().err
