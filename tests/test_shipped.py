"""Shipped models and presets are found by short name, legacy path or path, from any working folder."""

import json
import os
from pathlib import Path

import pytest

from gendistill.backends.loading import resolve_model
from gendistill.errors import UserError
from gendistill.shipped import (list_shipped_models, list_shipped_presets, resolve_model_name, resolve_preset,
                                shipped_configs_dir, shipped_model, shipped_models_dir)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run the test from an empty folder, as a user of an installed wheel would."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_shipped_folders_are_inside_the_package():
    import gendistill

    package = os.path.dirname(os.path.abspath(gendistill.__file__))
    assert str(shipped_models_dir()).startswith(package) and str(shipped_configs_dir()).startswith(package)
    assert {"shapes-teacher", "shapes-dmd2-1step"} <= set(list_shipped_models())
    assert "shapes-classifier" not in list_shipped_models()  # not a diffusers pipeline
    assert {"distill/shapes-lcm", "text-to-3d/shapes-sds", "shapes-teacher"} <= set(list_shipped_presets())


def test_short_name_and_legacy_path_resolve_from_any_folder(elsewhere):
    teacher = shipped_models_dir() / "shapes-teacher"
    for name in ("shapes-teacher", "assets/shapes-teacher", "assets/shapes-teacher/"):
        assert resolve_model_name(name) == str(teacher)
        assert resolve_model(name) == str(teacher)
    assert shipped_model("shapes-classifier") == shipped_models_dir() / "shapes-classifier"
    assert shipped_model("../shapes-teacher") is None and shipped_model("assets/") is None


def test_a_local_folder_wins_over_a_shipped_one(elsewhere):
    (elsewhere / "shapes-teacher").mkdir()
    (elsewhere / "shapes-teacher" / "model_index.json").write_text(json.dumps({}))
    assert resolve_model_name("shapes-teacher") == "shapes-teacher"
    assert resolve_model("shapes-teacher") == "shapes-teacher"


def test_hub_ids_pass_through_and_unknown_names_list_the_shipped_ones(elsewhere):
    assert resolve_model_name("owner/model") == "owner/model" == resolve_model("owner/model")
    for bad in ("shapes-nope", "assets/shapes-nope"):  # the second looks like a hub id but names an asset
        with pytest.raises(UserError, match="shapes-dmd2-1step") as err:
            resolve_model(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a diffusers pipeline folder"):
        resolve_model("shapes-classifier")


def test_presets_by_path_relative_path_and_stem(elsewhere):
    lcm = shipped_configs_dir() / "distill" / "shapes-lcm.yaml"
    for name in ("configs/distill/shapes-lcm.yaml", "distill/shapes-lcm.yaml", "distill/shapes-lcm", "shapes-lcm",
                 "shapes-lcm.yaml"):
        assert resolve_preset(name, "distill") == lcm
    assert resolve_preset("shapes-sds", "text-to-3d") == shipped_configs_dir() / "text-to-3d" / "shapes-sds.yaml"
    assert resolve_preset("shapes-teacher", "") == shipped_configs_dir() / "shapes-teacher.yaml"


def test_a_local_preset_wins_and_a_missing_one_lists_the_choices(elsewhere):
    (elsewhere / "shapes-lcm.yaml").write_text("teacher: mine\n")
    assert resolve_preset("shapes-lcm.yaml", "distill") == Path("shapes-lcm.yaml")
    with pytest.raises(UserError, match="config file not found: nope.*distill/shapes-lcm") as err:
        resolve_preset("nope", "distill")
    assert "text-to-3d/" not in str(err.value)  # only the command's own presets are offered
    for bad in ("../distill/shapes-lcm", "*", "distill/*"):
        with pytest.raises(UserError):
            resolve_preset(bad, "distill")


def test_the_distill_command_reads_a_preset_by_name(elsewhere):
    from gendistill.config import load_config
    from gendistill.jobs.distill.config import DistillConfig

    config = load_config(DistillConfig, resolve_preset("shapes-lcm", "distill"))
    assert config.recipe.KIND == "lcm"
    assert resolve_model(config.teacher) == str(shipped_models_dir() / "shapes-teacher")
    assert resolve_model(DistillConfig().teacher) == str(shipped_models_dir() / "shapes-teacher")
