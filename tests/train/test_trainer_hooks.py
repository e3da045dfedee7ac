"""What the trainer grew for every job: per-group optimizers and their hook, the NaN policy, the clean stop,
resume from the newest readable checkpoint, parameters that change size, learning-rate decay."""

import pytest
import torch
from torch import nn

from gendistill.errors import UserError
from gendistill.recipe import Loss, ParamGroup, Phase
from gendistill.train.checkpoint import latest_checkpoint
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer, TrainingDiverged
from toy_recipe import ToyRecipe, toy_batch


class GrowingRecipe:
    """Points pulled to a target, one Adam per group (``points``, ``scale``); every 3rd update the hook
    appends a point through the optimizers, as gsplat's densification does."""

    def __init__(self, nan_steps=()):
        torch.manual_seed(0)
        self.cloud = nn.ParameterDict({"points": nn.Parameter(torch.randn(4, 2)),
                                       "scale": nn.Parameter(torch.ones(1))})
        self.nan_steps = set(nan_steps)
        self.seen_optimizers = None

    def phases(self):
        return [Phase("cloud", groups=(ParamGroup("points", [self.cloud["points"]], lr=0.05, lr_final=0.1),
                                       ParamGroup("scale", [self.cloud["scale"]], lr=0.01)))]

    def modules(self):
        return {"cloud": self.cloud}

    def ema_module(self):
        return None

    def loss(self, batch, phase, step, generator):
        target = torch.randn(2, generator=generator) * 0.01
        loss = (self.cloud["points"] * self.cloud["scale"] - target).pow(2).mean()
        if step in self.nan_steps:
            loss = loss * float("nan")
        return Loss(loss, {"n": float(len(self.cloud["points"]))}, outputs=step)

    def after_update(self, update):
        self.seen_optimizers = update.optimizers
        if update.step % 3 == 2:
            grow(self.cloud, update.optimizers["points"])


def grow(cloud, optimizer):
    old = cloud["points"]
    new = nn.Parameter(torch.cat([old.detach(), old.detach()[:1] + 0.5]))
    state = optimizer.state.pop(old)
    for key in ("exp_avg", "exp_avg_sq"):
        state[key] = torch.cat([state[key], torch.zeros_like(state[key][:1])])
    optimizer.param_groups[0]["params"] = [new]
    optimizer.state[new] = state
    cloud["points"] = new


def kill_after(steps):
    def on_step(step, row, losses):
        if step + 1 == steps:
            raise KeyboardInterrupt
    return on_step


def cfg(**overrides):
    base = dict(steps=9, seed=5, checkpoint_every=3, log_every=1, grad_clip=None,
                optimizers={"cloud": OptimizerConfig(kind="adam", eps=1e-15)})
    return TrainerConfig(**{**base, **overrides})


def test_one_optimizer_per_group_and_the_hook_receives_them(tmp_path):
    recipe = GrowingRecipe()
    trainer = Trainer(recipe, cfg(), tmp_path, toy_batch, progress=False)
    trainer.fit()
    assert set(recipe.seen_optimizers) == {"points", "scale"}
    assert all(isinstance(o, torch.optim.Adam) for o in recipe.seen_optimizers.values())
    assert len(recipe.cloud["points"]) == 4 + 3  # grew at steps 2, 5, 8
    points = recipe.seen_optimizers["points"].param_groups[0]
    assert points["lr"] == pytest.approx(0.05 * 0.1)  # decayed to lr * lr_final at the last step
    assert recipe.seen_optimizers["scale"].param_groups[0]["lr"] == pytest.approx(0.01)


def test_resume_restores_parameters_that_changed_size(tmp_path):
    straight = GrowingRecipe()
    Trainer(straight, cfg(), tmp_path / "a", toy_batch, progress=False).fit()
    with pytest.raises(KeyboardInterrupt):  # "killed" after 6 of 9 steps (the rate schedule spans all 9)
        Trainer(GrowingRecipe(), cfg(), tmp_path / "b", toy_batch, progress=False, on_step=kill_after(6)).fit()
    resumed = GrowingRecipe()
    Trainer(resumed, cfg(), tmp_path / "b", toy_batch, progress=False).fit(resume=True)
    for key in ("points", "scale"):
        assert torch.equal(straight.cloud[key], resumed.cloud[key])


def test_nan_policy_skip_skips_the_update_and_counts_it(tmp_path):
    recipe = GrowingRecipe(nan_steps={4})
    result = Trainer(recipe, cfg(nan_policy="skip"), tmp_path, toy_batch, progress=False).fit()
    assert result.skipped_updates == 1 and result.step == 9
    assert torch.isfinite(recipe.cloud["points"]).all()
    assert [r.get("cloud/skipped") for r in result.history].count(1.0) == 1


def test_nan_policy_skip_stops_after_max_bad_steps_in_a_row(tmp_path):
    recipe = GrowingRecipe(nan_steps={4, 5, 6})
    with pytest.raises(TrainingDiverged, match=r"at step 6 in phase 'cloud' \(2 updates in a row skipped\); "
                                               r"last good checkpoint: .*step-0000003"):
        Trainer(recipe, cfg(nan_policy="skip", max_bad_steps=2), tmp_path, toy_batch, progress=False).fit()


def test_a_stop_from_on_step_writes_a_checkpoint_calls_on_stop_and_resumes_exactly(tmp_path):
    straight = ToyRecipe()
    config = TrainerConfig(steps=10, seed=2, checkpoint_every=0, log_every=1)
    Trainer(straight, config, tmp_path / "a", toy_batch, progress=False).fit()

    def stop_at_7(step, row, losses):
        assert set(losses) == {"fit", "aux"}
        if step == 6:
            raise KeyboardInterrupt

    stopped = []
    trainer = Trainer(ToyRecipe(), config, tmp_path / "b", toy_batch, progress=False, on_step=stop_at_7,
                      on_stop=stopped.append)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert stopped[0].stopped == "interrupted" and stopped[0].step == 7
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-0000007"
    resumed = ToyRecipe()
    Trainer(resumed, config, tmp_path / "b", toy_batch, progress=False).fit(resume=True)
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        assert torch.equal(a, b)


def test_resume_falls_back_to_the_newest_readable_checkpoint_and_says_which(tmp_path):
    config = TrainerConfig(steps=8, seed=1, checkpoint_every=4, keep_checkpoints=3)
    Trainer(ToyRecipe(), config, tmp_path, toy_batch, progress=False).fit()
    newest = tmp_path / "checkpoints" / "step-0000008" / "modules.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    said = []
    trainer = Trainer(ToyRecipe(), TrainerConfig(**{**config.__dict__, "steps": 9}), tmp_path, toy_batch,
                      progress=False, log=said.append)
    result = trainer.fit(resume=True)
    assert result.resumed_from.name == "step-0000004" and result.step == 9
    assert said and said[0].startswith("resumed from step-0000004 (newer, unreadable: step-0000008:")


def test_resume_with_no_readable_checkpoint_is_one_user_error(tmp_path):
    config = TrainerConfig(steps=4, seed=1, checkpoint_every=4)
    Trainer(ToyRecipe(), config, tmp_path, toy_batch, progress=False).fit()
    (tmp_path / "checkpoints" / "step-0000004" / "state.json").write_text("{")
    with pytest.raises(UserError, match=r"no readable checkpoint in .*step-0000004"):
        Trainer(ToyRecipe(), config, tmp_path, toy_batch, progress=False).fit(resume=True)


def test_the_process_random_stream_is_untouched_by_a_run(tmp_path):
    trainer = Trainer(ToyRecipe(), TrainerConfig(steps=2, checkpoint_every=0), tmp_path, toy_batch, progress=False)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    trainer.fit()
    assert torch.equal(torch.rand(3), expected)


def test_runs_at_different_precisions_share_one_process(tmp_path):
    """accelerate keeps one state per process; the trainer's own autocast lets a bf16 run follow a float32 one."""
    seen = []

    class Spy(ToyRecipe):
        def loss(self, batch, phase, step, generator):
            seen.append(self.student[0](batch).dtype)
            return super().loss(batch, phase, step, generator)

    for precision in ("no", "bf16"):
        config = TrainerConfig(steps=1, checkpoint_every=0, mixed_precision=precision)
        Trainer(Spy(), config, tmp_path / precision, toy_batch, progress=False).fit()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16


def test_evaluation_sees_the_ema_weights_and_training_continues_on_the_live_ones(tmp_path):
    """With an EMA, the evaluation hook runs on the EMA's weights (what an export takes): the student's values
    during the hook equal the shadow's, and the run ends with the same weights as one without evaluation."""
    def run(folder, eval_on_ema, with_eval):
        recipe, seen = ToyRecipe(), []
        config = TrainerConfig(steps=6, ema_decay=0.5, eval_every=2 if with_eval else 0, eval_on_ema=eval_on_ema,
                               checkpoint_every=0, optimizers={"fit": OptimizerConfig(lr=0.05)})

        def evaluate(step):
            trainer_ema = trainer.ema.state_dict()
            seen.append(all(torch.equal(v, trainer_ema[k]) for k, v in recipe.student.state_dict().items()))
            return {"norm": float(recipe.student[0].weight.detach().norm())}

        trainer = Trainer(recipe, config, tmp_path / folder, toy_batch, evaluate if with_eval else None,
                          progress=False)
        trainer.fit()
        return recipe, seen

    plain, _ = run("plain", True, False)
    on_ema, seen = run("ema", True, True)
    live, seen_live = run("live", False, True)
    assert seen == [True, True, True] and seen_live == [False, False, False]
    for other in (on_ema, live):
        assert all(torch.equal(a, b) for a, b in zip(plain.student.state_dict().values(),
                                                      other.student.state_dict().values()))
