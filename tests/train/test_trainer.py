"""The trainer: phases and ratios, exact resume, NaN guard, EMA, gradient accumulation, 2-process gloo."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gendistill.errors import UserError
from gendistill.train.checkpoint import latest_checkpoint
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer, TrainingDiverged
from toy_recipe import ToyRecipe, toy_batch


def config(**overrides):
    base = dict(steps=12, seed=3, checkpoint_every=4, log_every=1, ema_decay=0.9,
                optimizers={"fit": OptimizerConfig(lr=1e-2, warmup_steps=3), "aux": OptimizerConfig(lr=5e-3)})
    return TrainerConfig(**{**base, **overrides})


def weights(recipe):
    return {f"{m}.{k}": v.clone() for m, mod in recipe.modules().items() for k, v in mod.state_dict().items()}


def test_phases_run_with_their_ratios_and_loss_falls(tmp_path):
    recipe = ToyRecipe()
    result = Trainer(recipe, config(steps=60, checkpoint_every=0), tmp_path, toy_batch, progress=False).fit()
    rows = [r for r in result.history if "fit/loss" in r]
    assert rows[-1]["fit/loss"] < 0.5 * rows[0]["fit/loss"]
    assert {"aux/loss", "aux/mse"} <= set(rows[0])
    assert recipe.updates == 60 * (1 + 2)  # after_update follows every optimizer step of every phase


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = ToyRecipe()
    Trainer(straight, config(), tmp_path / "a", toy_batch, progress=False).fit()

    interrupted = ToyRecipe()
    Trainer(interrupted, config(steps=8), tmp_path / "b", toy_batch, progress=False).fit()  # "killed" after 8
    resumed = ToyRecipe()  # a fresh process: new modules, state only from the checkpoint
    trainer = Trainer(resumed, config(), tmp_path / "b", toy_batch, progress=False)
    trainer.fit(resume=True)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt_a, ckpt_b = latest_checkpoint(tmp_path / "a" / "checkpoints"), latest_checkpoint(tmp_path / "b" / "checkpoints")
    ea, eb = load_file(ckpt_a / "ema.safetensors"), load_file(ckpt_b / "ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_resume_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        Trainer(ToyRecipe(), config(), tmp_path, toy_batch, progress=False).fit(resume=True)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(ToyRecipe(blow_up_at=6), config(), tmp_path, toy_batch, progress=False)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 6 in phase 'fit'; last good checkpoint: .*step-0000004"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-0000004"


def test_gradient_accumulation_averages_micro_batch_gradients(tmp_path):
    """One step with 2 micro-batches equals AdamW on the mean of the two micro-batch gradients."""
    from gendistill.train.trainer import step_generator

    cfg = config(steps=1, grad_accumulation=2, grad_clip=None, optimizers={"fit": OptimizerConfig(lr=1e-2)})
    trained = ToyRecipe()
    Trainer(trained, cfg, tmp_path, toy_batch, progress=False).fit()

    manual = ToyRecipe()
    for micro in range(2):
        g = step_generator(cfg.seed, 0, 0, 0, micro, 0)
        (manual.loss(toy_batch(0, g), "fit", 0, g).total / 2).backward()
    torch.optim.AdamW(manual.student.parameters(), lr=1e-2, weight_decay=0.0).step()
    for a, b in zip(trained.student.parameters(), manual.student.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = r"""
import os, sys, torch
sys.path.insert(0, {tests!r})
import gendistill
from gendistill.train.config import TrainerConfig, OptimizerConfig
from gendistill.train.trainer import Trainer
from toy_recipe import ToyRecipe, toy_batch
from safetensors.torch import save_file
torch.manual_seed(int(os.environ["RANK"]))  # different initial weights per rank: the trainer must sync them
recipe = ToyRecipe()
for p in recipe.student.parameters():
    p.data += 0.1 * int(os.environ["RANK"])
cfg = TrainerConfig(steps=5, seed=1, checkpoint_every=0, optimizers={{"fit": OptimizerConfig(lr=1e-2)}})
Trainer(recipe, cfg, {out!r}, toy_batch, progress=False).fit()
save_file({{k: v.contiguous() for k, v in recipe.student.state_dict().items()}}, {out!r} + f"/rank{{os.environ['RANK']}}.safetensors")
"""


@pytest.mark.slow
def test_two_process_gloo_run_ends_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    w0, w1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    start = ToyRecipe().student.state_dict()
    assert not torch.equal(w0["0.weight"], start["0.weight"])  # it trained
