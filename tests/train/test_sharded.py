"""Sharded training (trainer.distributed=fsdp, FSDP2 on 2 gloo CPU processes): it matches one process on the
same data, and a killed run resumes bit-identically from its sharded checkpoint (or the previous one when
the newest is damaged)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gendistill.recipe import Loss, ParamGroup, Phase
from gendistill.train.config import OptimizerConfig, TrainerConfig
from gendistill.train.trainer import Trainer


class ShardRecipe:
    """A deterministic two-phase recipe: "fit" regresses a frozen target through a ModuleList of blocks (one
    FSDP unit each; odd sizes shard unevenly), "aux" (twice a step, two parameter groups) follows it."""

    def __init__(self):
        torch.manual_seed(0)
        self.student = Student()
        self.aux = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 2))
        self.target = nn.Linear(4, 2).requires_grad_(False)

    def phases(self):
        first, last = self.aux[0], self.aux[2]
        groups = (ParamGroup("first", list(first.parameters())), ParamGroup("last", list(last.parameters()), 2e-3))
        return [Phase("fit", list(self.student.parameters()), lr_final=0.5), Phase("aux", [], 2, groups)]

    def modules(self):
        return {"student": self.student, "aux": self.aux, "target": self.target}

    def ema_module(self):
        return "student"

    def after_update(self, update):
        pass

    def loss(self, batch, phase, step, generator):
        if phase == "fit":
            loss = (self.student(batch) - self.target(batch)).pow(2).mean()
        else:
            loss = (self.aux(batch) - self.student(batch).detach()).pow(2).mean()
        return Loss(loss, {"mse": loss.item()})


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(n, 5), nn.Tanh()) for n in (4, 5)])
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def rank_batch(step: int, rank: int) -> torch.Tensor:
    """Each rank's batch depends only on (step, rank), so one process can train on their union."""
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * step + rank))


def trainer_config(**overrides) -> TrainerConfig:
    base = dict(steps=6, seed=1, checkpoint_every=2, log_every=1, ema_decay=0.8, grad_clip=0.05,
                optimizers={"fit": OptimizerConfig(lr=2e-2, warmup_steps=2), "aux": OptimizerConfig(lr=1e-2)})
    return TrainerConfig(**{**base, **overrides})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = r"""
import json, os, shutil, sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from safetensors.torch import save_file
from gendistill.train.trainer import Trainer
from gendistill.train.sharded import full_state_dict
from torch.distributed.fsdp import FSDPModule
from test_sharded import ShardRecipe, rank_batch, trainer_config

rank, out = int(os.environ["RANK"]), Path({out!r})
device = "cpu" if os.environ.get("ACCELERATE_USE_CPU") == "true" else f"cuda:{{rank}}"
batch = lambda step, generator: rank_batch(step, rank).to(device)


def stop_at(k):
    def on_step(step, row, losses):
        if step == k:
            raise KeyboardInterrupt
    return on_step


def run(name, resume=False, on_step=None, logs=None):
    recipe = ShardRecipe()
    if rank == 1:  # different initial weights per rank: the trainer must start every rank from rank 0's
        for p in recipe.student.parameters():
            p.data += 0.1
    trainer = Trainer(recipe, trainer_config(distributed="fsdp"), out / name, batch, progress=False,
                      on_step=on_step, log=logs.append if logs is not None else None)
    try:
        result = trainer.fit(resume=resume)
    except KeyboardInterrupt:
        return None
    tensors = {{f"{{m}}/{{k}}": v for m in ("student", "aux") for k, v in full_state_dict(recipe.modules()[m]).items()}}
    tensors.update({{f"ema/{{k}}": v for k, v in full_state_dict(trainer.ema.shadow).items()}})
    save_file({{k: v.contiguous() for k, v in tensors.items()}}, out / f"{{name}}-rank{{rank}}.safetensors")
    (out / f"{{name}}-rank{{rank}}.json").write_text(json.dumps({{"history": result.history, "logs": logs,
        "resumed_from": str(result.resumed_from),
        "units": [n for n, m in recipe.student.named_modules() if isinstance(m, FSDPModule)]}}))


run("whole")
run("killed", on_step=stop_at(2))
run("killed", resume=True, logs=[])
run("damaged", on_step=stop_at(2))
if rank == 0:
    for shard in (out / "damaged/checkpoints/step-0000003").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:20])
torch.distributed.barrier()
run("damaged", resume=True, logs=[])
"""


def _launch(out: Path, cpu: bool) -> Path:
    """Two processes (gloo on CPU, or NCCL on two GPUs): an uninterrupted fsdp run, one killed after 3 steps
    and resumed, and one resumed after its newest checkpoint was damaged."""
    script = out / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(out)))
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        env["ACCELERATE_USE_CPU"] = "true" if cpu else "false"
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors[0][-4000:] + errors[1][-4000:]
    return out


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("fsdp"), cpu=True)


def _result(out: Path, name: str, rank: int = 0):
    return load_file(out / f"{name}-rank{rank}.safetensors"), json.loads((out / f"{name}-rank{rank}.json").read_text())


@pytest.mark.slow
def test_sharded_run_matches_one_process_on_the_union_of_the_batches(sharded_runs, tmp_path):
    recipe = ShardRecipe()
    both = lambda step, generator: torch.cat([rank_batch(step, 0), rank_batch(step, 1)])
    trainer = Trainer(recipe, trainer_config(), tmp_path, both, progress=False)
    history = trainer.fit().history
    sharded, meta = _result(sharded_runs, "whole")
    reference = {**{f"{m}/{k}": v for m in ("student", "aux") for k, v in recipe.modules()[m].state_dict().items()},
                 **{f"ema/{k}": v for k, v in trainer.ema.state_dict().items()}}
    assert sharded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.allclose(sharded[key], value, rtol=1e-5, atol=1e-6), key
    assert not torch.allclose(sharded["student/head.weight"], ShardRecipe().student.head.weight, atol=1e-3)
    other = _result(sharded_runs, "whole", 1)[1]["history"]
    for ours, theirs, union in zip(meta["history"], other, history):  # each rank logs its own batch's loss
        assert ours.keys() == union.keys()
        assert (ours["fit/mse"] + theirs["fit/mse"]) / 2 == pytest.approx(union["fit/mse"], rel=1e-4)
    assert meta["history"][-1]["fit/mse"] < meta["history"][0]["fit/mse"]
    assert meta["units"] == ["", "blocks.0", "blocks.1"]  # one FSDP unit per block, one for the rest


@pytest.mark.slow
def test_every_rank_ends_with_the_same_full_weights(sharded_runs):
    w0, w1 = _result(sharded_runs, "whole", 0)[0], _result(sharded_runs, "whole", 1)[0]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.slow
def test_killed_sharded_run_resumes_bit_identically(sharded_runs):
    whole, whole_meta = _result(sharded_runs, "whole")
    resumed, meta = _result(sharded_runs, "killed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert meta["history"] == whole_meta["history"]
    assert meta["logs"] == ["resumed from step-0000003"]
    state = json.loads((sharded_runs / "killed/checkpoints/step-0000006/state.json").read_text())
    assert state["step"] == 6 and state["counters"]["updates/aux"] == 12 and state["world_size"] == 2
    assert (sharded_runs / "killed/checkpoints/latest").read_text() == "step-0000006"
    assert sorted(p.name for p in (sharded_runs / "killed/checkpoints").iterdir()) == \
        ["latest", "step-0000004", "step-0000006"]


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(sharded_runs):
    whole = _result(sharded_runs, "whole")[0]
    resumed, meta = _result(sharded_runs, "damaged")
    assert meta["resumed_from"].endswith("step-0000002")
    assert meta["logs"][0].startswith("resumed from step-0000002 (newer, unreadable: step-0000003:")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_fsdp_with_one_process_trains_unsharded(tmp_path):
    logs = []
    recipe = ShardRecipe()
    trainer = Trainer(recipe, trainer_config(steps=2, distributed="fsdp"), tmp_path, lambda s, g: rank_batch(s, 0),
                      progress=False, log=logs.append)
    result = trainer.fit()
    assert logs == ["trainer.distributed=fsdp with one process: nothing to shard, training unsharded"]
    assert (result.checkpoint / "modules.safetensors").is_file()


@pytest.mark.gpu
@pytest.mark.slow
def test_nccl_sharded_runs_agree_and_resume_bit_identically(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    out = _launch(tmp_path, cpu=False)
    whole = _result(out, "whole")[0]
    assert all(torch.equal(whole[k], _result(out, "whole", 1)[0][k]) for k in whole)
    for name in ("killed", "damaged"):
        assert all(torch.equal(whole[k], _result(out, name)[0][k]) for k in whole), name
