"""The NeRF jobs on the one trainer: a killed fit or PVD run resumes bit-identically, Ctrl-C keeps the outputs
of the last step, and the NaN policy skips and counts bad updates."""

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("nerfstudio")

from gendistill.convert.data import shapes_views  # noqa: E402
from gendistill.convert.fit import FIELD_PHASE, FitConfig, NerfFitRecipe, field_optimizer  # noqa: E402
from gendistill.jobs.convert import (  # noqa: E402
    RecipeRun, TrainerSection, load_convert_config, load_fit_config, run_convert, run_fit_nerf, train_recipe,
)
from gendistill.recipe import Loss  # noqa: E402
from gendistill.render.nerf import FieldConfig, build_field, save_field  # noqa: E402
from gendistill.render.nerf.fields import TensorVMSizes  # noqa: E402
from gendistill.train.trainer import TrainingDiverged  # noqa: E402

pytestmark = pytest.mark.nerf
TINY_FIELD = ["field.tensorf_vm.resolution=16", "field.hidden_width=16"]
TINY_FIT = ["views=4", "holdout_views=2", "resolution=12", "fit.rays_per_step=64", "fit.num_samples=8"]


def kill_after(steps):
    """An on_step hook that presses Ctrl-C once ``steps`` steps are done."""
    def hook(step, row, losses):
        if step + 1 == steps:
            raise KeyboardInterrupt
    return hook


def weights(path):
    return load_file(str(path))


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_killed_fit_resumes_to_the_same_field_bit_for_bit(tmp_path):
    config = load_fit_config(["field.architecture=tensorf-vm", "fit.steps=6", *TINY_FIELD, *TINY_FIT])
    run_fit_nerf(config, tmp_path / "straight", prompt="a red cube", progress=False)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_fit_nerf(config, killed, prompt="a red cube", progress=False, on_step=kill_after(3))
    stopped = json.loads((killed / "metrics.json").read_text())
    assert stopped["stopped"] == "interrupted" and stopped["steps"] == 3  # outputs of the last step were written
    assert (killed / "field.safetensors").is_file() and (killed / "checkpoints" / "step-0000003").is_dir()
    assert not torch.equal(*(weights(p / "field.safetensors")["encoder.plane_coef"]
                             for p in (killed, tmp_path / "straight")))
    logged = []
    resumed = run_fit_nerf(config, killed, prompt="a red cube", progress=False, resume=True, log=logged.append)
    assert resumed.metrics["steps"] == 6 and resumed.metrics["stopped"] is None
    assert resumed.metrics["resumed_from"].endswith("step-0000003") and "resumed from step-0000003" in logged[0]
    assert_same_tensors(weights(killed / "field.safetensors"), weights(tmp_path / "straight" / "field.safetensors"))


@pytest.mark.parametrize("route", ["on-the-fly", "bank"])
def test_killed_pvd_al_run_resumes_to_the_same_student_bit_for_bit(tmp_path, route):
    teacher = save_field(build_field(FieldConfig(architecture="tensorf-vm", tensorf_vm=TensorVMSizes(resolution=16)), seed=3),
                         tmp_path / "teacher.safetensors")
    # on the fly: PVD-AL's replay memory; bank: a refresh at step 2 and 4 (killed after 3, between the two)
    bank_keys = ["pvd.bank.points=64", "pvd.bank.rays=16", "pvd.bank.refresh_every=2",
                 "pvd.bank.occupancy_resolution=8"]
    route_keys = ["pvd.focus=true", "pvd.bank.enabled=false"] if route == "on-the-fly" else bank_keys
    config = load_convert_config(["views=3", "holdout_views=2", "resolution=12", "pvd.steps=6", *route_keys,
                                  "pvd.points_per_step=64", "pvd.rays_per_step=16", "pvd.num_samples=8",
                                  "student.tensorf_cp.resolution=16", "student.hidden_width=16"])
    straight = run_convert(config, teacher, "tensorf-cp", tmp_path / "straight", progress=False)
    assert {"student/features", "student/rays"} <= set().union(*straight.train.history)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_convert(config, teacher, "tensorf-cp", killed, progress=False, on_step=kill_after(3))
    extra = load_file(str(killed / "checkpoints" / "step-0000003" / "extra.safetensors"))
    if route == "on-the-fly":
        assert extra["focus_points"].shape == (32, 3) and extra["focus_rays"].shape == (8,)  # PVD-AL's memory
    else:  # the bank as refreshed at step 2, with the errors recorded at step 2
        assert extra["bank_points"].shape == (64, 3) and int(extra["bank_refreshed_at"]) == 2
        assert extra["bank_point_error"].gt(0).any()
    assert json.loads((killed / "metrics.json").read_text())["stopped"] == "interrupted"
    run_convert(config, teacher, "tensorf-cp", killed, progress=False, resume=True)
    assert_same_tensors(weights(killed / "field.safetensors"), weights(tmp_path / "straight" / "field.safetensors"))


class PoisonedFit(NerfFitRecipe):
    """A field fit whose loss is NaN at the given steps."""

    def __init__(self, *args, bad_steps=()):
        super().__init__(*args)
        self.bad_steps = set(bad_steps)

    def loss(self, batch, phase, step, generator):
        loss = super().loss(batch, phase, step, generator)
        return Loss(loss.total * float("nan"), loss.terms) if step in self.bad_steps else loss


def _poisoned_run(tmp_path, bad_steps, nan_policy, snapshots=None):
    data = shapes_views("a red cube", 2, torch.Generator().manual_seed(0), size=8)
    field = build_field(FieldConfig(architecture="tensorf-vm", tensorf_vm=TensorVMSizes(resolution=8), hidden_width=8), seed=0)
    recipe = PoisonedFit(field, data, FitConfig(steps=4, rays_per_step=16, num_samples=4), bad_steps=bad_steps)
    hook = None if snapshots is None else (lambda step, row, losses: snapshots.append(
        {k: v.clone() for k, v in field.state_dict().items()}))
    section = TrainerSection(nan_policy=nan_policy, max_bad_steps=2, checkpoint_every=0)
    return train_recipe(RecipeRun(recipe, 4, FIELD_PHASE, field_optimizer()), section, 0, tmp_path, progress=False,
                        on_step=hook)


def test_nan_policy_skip_skips_and_counts_the_bad_update(tmp_path):
    snapshots = []
    result = _poisoned_run(tmp_path, {2}, "skip", snapshots)
    assert result.step == 4 and result.skipped_updates == 1 and result.stopped is None
    assert_same_tensors(snapshots[1], snapshots[2])  # step 2 changed nothing
    assert not torch.equal(snapshots[2]["encoder.plane_coef"], snapshots[3]["encoder.plane_coef"])
    assert load_fit_config(["trainer.nan_policy=skip"]).trainer.nan_policy == "skip"


def test_nan_policy_raise_and_too_many_skips_stop_the_run(tmp_path):
    with pytest.raises(TrainingDiverged, match="step 2"):
        _poisoned_run(tmp_path / "raise", {1}, "raise")
    with pytest.raises(TrainingDiverged, match="2 updates in a row skipped"):
        _poisoned_run(tmp_path / "skip", {1, 2}, "skip")
