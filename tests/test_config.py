"""Typed configs: YAML + overrides into nested dataclasses; unknown keys and wrong types are clear errors."""

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from gendistill.config import load_config, save_config
from gendistill.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-4
    """Learning rate."""
    betas: tuple[float, ...] = (0.9, 0.999)
    """Adam betas."""


@dataclass
class DMD:
    KIND: ClassVar[str] = "dmd"
    fake_updates: int = 5
    """Fake-score updates per generator update."""


@dataclass
class LCM:
    KIND: ClassVar[str] = "lcm"
    loss: Literal["huber", "l2"] = "huber"
    """Consistency loss."""


@dataclass
class Run:
    seed: int = 0
    """Random seed."""
    name: str | None = None
    """Run name."""
    optim: Optim = field(default_factory=Optim)
    """Optimizer."""
    recipe: DMD | LCM = field(default_factory=DMD)
    """Which recipe."""


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_build_nested_dataclasses(tmp_path):
    path = write(tmp_path, "seed: 3\noptim:\n  lr: 0.001\nrecipe:\n  kind: lcm\n  loss: l2\n")
    cfg = load_config(Run, path, ["optim.betas=[0.5, 0.9]", "name=test"])
    assert cfg.seed == 3 and cfg.optim.lr == 0.001 and cfg.optim.betas == (0.5, 0.9) and cfg.name == "test"
    assert isinstance(cfg.recipe, LCM) and cfg.recipe.loss == "l2"


def test_defaults_without_file():
    cfg = load_config(Run)
    assert cfg == Run()


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = load_config(Run, None, ["recipe.kind=lcm", "optim.lr=2"])
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Run, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; valid keys here: betas, lr"),
    ("seed=abc", "seed must be an int, got 'abc'"),
    ("seed=true", "seed must be an int, got True"),
    ("recipe.kind=gan", "recipe.kind must be one of dmd, lcm, got 'gan'"),
    ("recipe.kind=lcm", None),
    ("optim=3", "optim must be a mapping"),
])
def test_errors_name_the_key(override, message):
    if message is None:
        assert isinstance(load_config(Run, None, [override]).recipe, LCM)
        return
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(Run, None, [override])


def test_bad_literal_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="recipe.loss must be one of 'huber', 'l2'"):
        load_config(Run, None, ["recipe.kind=lcm", "recipe.loss=l1"])
    with pytest.raises(UserError, match="config file not found"):
        load_config(Run, tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Run, write(tmp_path, "a: [1,"))


def test_yes_and_no_stay_strings():
    @dataclass
    class Precision:
        mode: Literal["no", "bf16"] = "bf16"
        """Mode."""
        flag: bool = False
        """A flag."""

    cfg = load_config(Precision, None, ["mode=no", "flag=true"])
    assert cfg.mode == "no" and cfg.flag is True


def test_variant_section_without_kind_keeps_the_default_variant():
    cfg = load_config(Run, None, ["recipe.fake_updates=7"])
    assert isinstance(cfg.recipe, DMD) and cfg.recipe.fake_updates == 7


def test_override_keeps_the_other_values_of_a_non_default_section():
    from gendistill.jobs.distill.config import DistillConfig

    cfg = load_config(DistillConfig, None, ["trainer.steps=150"])
    assert cfg.trainer.steps == 150 and cfg.trainer.ema_decay == 0.99
    assert cfg.trainer.optimizers["generator"].lr == 1e-4 and cfg.trainer.checkpoint_every == 100


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads `5e-3` as a string; users type it on the command line all the time."""
    cfg = load_config(Run, write(tmp_path, "optim:\n  lr: 1e-3\n"), ["seed=7"])
    assert cfg.optim.lr == 1e-3 and cfg.seed == 7
    assert load_config(Run, None, ["optim.lr=5e-3"]).optim.lr == 5e-3
