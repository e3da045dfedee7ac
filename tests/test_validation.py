"""One validation style: config checks named by their full key, reported at load time as one line and exit 2;
one ``--out`` helper for every job; one timestep-range type for DMD and score distillation; no import circle
in score/."""

import subprocess
import sys
from dataclasses import dataclass, field
from typing import get_type_hints

import pytest
import torch

from gendistill.cli import main
from gendistill.config import check_config, from_dict, load_config
from gendistill.diffusion.timesteps import TimestepRange
from gendistill.jobs.distill.config import DistillConfig
from gendistill.distill.dmd import DMD2Config, DMD2Recipe
from gendistill.errors import UserError, check_range, key_path
from gendistill.run_dir import check_out_dir, prepare_out_dir
from gendistill.score.sds import SDSConfig
from gendistill.score.vsd import VSDConfig
from gendistill.train.config import TrainerConfig
from tiny_pipelines import tiny_unet, unet_model


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# --- checks at load time, through the CLI -------------------------------------------------------------


def test_negative_trainer_steps_is_a_one_line_error_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--set", "trainer.steps=-3", "--out", str(out)]) == 2
    assert one_line_error(capsys) == "error: trainer.steps must be >= 1, got -3"
    assert not out.exists()  # nothing trained, nothing exported


@pytest.mark.parametrize("override,message", [
    ("trainer.ema_decay=1.0", "trainer.ema_decay must be in (0, 1) or null (no EMA), got 1"),
    ("trainer.log_every=0", "trainer.log_every must be >= 1, got 0"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every must be >= 0, got -1"),
    ("recipe.timesteps.t_max=1.5", "recipe.timesteps.t_max must be in [0, 1], got 1.5"),
    ("recipe.fake_updates=0", "recipe.fake_updates must be >= 1, got 0"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("eval.teacher_steps=[4, 0]", "eval.teacher_steps[1] must be >= 1, got 0"),
])
def test_distill_config_errors_name_the_full_key(override, message):
    with pytest.raises(UserError) as err:
        load_config(DistillConfig, None, [override])
    assert str(err.value) == message


def test_checks_follow_the_variant_picked_by_kind():
    with pytest.raises(UserError, match="recipe.steps_per_stage must be >= 1, got 0"):
        load_config(DistillConfig, None, ["recipe.kind=progressive", "recipe.steps_per_stage=0"])
    with pytest.raises(UserError, match="recipe.w_min"):
        load_config(DistillConfig, None, ["recipe.kind=lcm", "recipe.w_min=20"])


def test_text_to_3d_checks_live_on_the_config_and_run_at_load(tmp_path, capsys):
    from gendistill.jobs.text_to_3d.config import load_text3d_config

    with pytest.raises(UserError, match=r"method.timesteps.t_end must be in \[0, 0.98\], got 0.99"):
        load_text3d_config(None, ["method.timesteps.t_end=0.99"])
    with pytest.raises(UserError, match=r"cameras.elevation_range_deg\[1\] must be in \[30, 89\], got 10"):
        load_text3d_config(None, ["cameras.elevation_range_deg=[30, 10]"])
    assert main(["text-to-3d", "a red cube", "--set", "iterations=0", "--out", str(tmp_path / "t")]) == 2
    assert one_line_error(capsys) == "error: iterations must be >= 1, got 0"
    assert main(["text-to-3d", "a red cube", "--method", "npg", "--set", "method.negative_prompt=''",
                 "--out", str(tmp_path / "t")]) == 2
    assert "method.negative_prompt is empty" in one_line_error(capsys)


def test_the_walker_reaches_nested_lists_and_dicts_with_their_paths():
    @dataclass
    class Leaf:
        n: int = 1

        def check(self, path: str) -> None:
            check_range(key_path(path, "n"), self.n, 1)

    @dataclass
    class Root:
        leaves: list[Leaf] = field(default_factory=list)
        named: dict[str, Leaf] = field(default_factory=dict)

    check_config(Root([Leaf(), Leaf()], {"a": Leaf()}))
    with pytest.raises(UserError, match=r"^leaves\[1\].n must be >= 1, got 0$"):
        check_config(Root([Leaf(), Leaf(0)]))
    with pytest.raises(UserError, match=r"^job.named.b.n must be >= 1, got -2$"):
        from_dict(Root, {"named": {"b": {"n": -2}}}, "job")
    with pytest.raises(UserError, match="^steps must be >= 1"):  # a section checked on its own
        check_config(TrainerConfig(steps=0))


# --- --out ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["distill", "--set", "trainer.steps=1"],
    ["text-to-3d", "a red cube"],
    ["train-teacher"],
    ["fit-nerf", "--prompt", "a red cube"],
    ["convert-nerf", "--teacher", "field.safetensors", "--to", "mlp"],
])
def test_out_naming_a_file_is_one_line_for_every_job(tmp_path, capsys, args):
    readme = tmp_path / "README.md"
    readme.write_text("not a folder")
    assert main([*args, "--out", str(readme)]) == 2
    assert one_line_error(capsys) == f"error: --out {readme} is a file; give a folder"
    assert readme.read_text() == "not a folder"


def test_out_helper_makes_folders_and_refuses_paths_under_a_file(tmp_path):
    made = prepare_out_dir(tmp_path / "a" / "b")
    assert made.is_dir() and check_out_dir(made) == made
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is a file, so no folder can be made inside it"):
        check_out_dir(tmp_path / "f" / "run")


# --- one timestep range for DMD and score distillation --------------------------------------------------


def test_dmd_and_score_distillation_share_one_timestep_range_type_and_unit():
    assert get_type_hints(DMD2Config)["timesteps"] is TimestepRange
    assert TimestepRange in get_type_hints(SDSConfig)["timesteps"].__args__
    assert TimestepRange in get_type_hints(VSDConfig)["timesteps"].__args__
    assert DMD2Config().timesteps == SDSConfig().timesteps == TimestepRange(0.02, 0.98)
    assert from_dict(DMD2Config, {"timesteps": {"t_min": 0.25, "t_max": 0.5}}).timesteps == TimestepRange(0.25, 0.5)


@pytest.mark.parametrize("num_train_timesteps", [1000, 100])
def test_dmd_draws_the_timesteps_the_score_policy_draws(num_train_timesteps):
    """The same range is the same fraction of any model's timesteps, and DMD's DM gradient draws exactly the
    timestep indices the score-distillation policy draws from the same generator state."""
    torch.manual_seed(0)
    model = unet_model(tiny_unet(), num_train_timesteps=num_train_timesteps)
    timesteps = TimestepRange(0.25, 0.5)
    recipe = DMD2Recipe(model, DMD2Config(timesteps=timesteps))
    T = num_train_timesteps
    assert (recipe.dm_sigmas.t_min, recipe.dm_sigmas.t_max) == (T // 4, T // 2)
    dmd = recipe.dm_sigmas(5000, torch.Generator().manual_seed(3))
    sds = timesteps.sample(0, 1, 5000, torch.Generator().manual_seed(3), model.train_sigmas)
    assert torch.equal(dmd, sds)
    drawn = {float(s) for s in sds}
    assert drawn == {float(s) for s in model.train_sigmas[T // 4:T // 2 + 1]}


# --- the score package has no import circle ------------------------------------------------------------


@pytest.mark.parametrize("module", ["gendistill.score.vsd", "gendistill.score.sds", "gendistill.score.teacher"])
def test_each_score_module_imports_alone_without_the_guidance_union(module):
    code = (f"import sys, {module}; bad = [m for m in sys.modules if m == 'gendistill.score.guidance'"
            " or m.startswith(('gendistill.jobs', 'gendistill.text_to_3d', 'gendistill.distill'))]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
