"""`gendistill distill --set trainer.distributed=fsdp` on 2 gloo CPU processes (as `accelerate launch
--num_processes 2 -m gendistill distill ...` starts them): every rank trains and evaluates its shard, rank 0
alone exports the gathered student (its EMA) as a stock diffusers folder and writes the run's outputs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from tiny_pipelines import tiny_sd_pipeline

PRESET = Path(__file__).parents[2] / "configs" / "distill" / "shapes-dmd2.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, overrides: list[str]) -> list[subprocess.CompletedProcess]:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
        args = [sys.executable, "-m", "gendistill", "distill", str(PRESET), "--out", str(out)]
        args += [a for o in overrides for a in ("--set", o)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:  # one rank failed and the other waits in a collective
                p.kill()
    errors = "\n".join(f"rank {r} (exit {p.returncode}):\n{err[-12000:]}"
                       for r, (p, (_, err)) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), errors
    return [subprocess.CompletedProcess(p.args, p.returncode, *o) for p, o in zip(procs, outputs)]


@pytest.mark.slow
def test_fsdp_distill_exports_the_gathered_student_from_rank_0(tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    teacher = tmp_path / "sd"
    tiny_sd_pipeline(teacher, seed=0)
    out = tmp_path / "run"
    overrides = [f"teacher={teacher}", "trainer.steps=2", "trainer.checkpoint_every=1", "trainer.eval_every=1",
                 "trainer.mixed_precision=no", "trainer.distributed=fsdp", "data.batch_size=2",
                 "recipe.fake_updates=1", "eval.during_training_samples=2", "eval.num_samples=2",
                 "eval.teacher_steps=[2]", "eval.student_steps=[1]", "eval.grid_prompts=2"]
    ranks = _launch(out, overrides)

    checkpoint = out / "checkpoints" / "step-0000002"
    assert json.loads((checkpoint / "state.json").read_text())["world_size"] == 2  # trained sharded
    assert [r.stdout.count("student: ") for r in ranks] == [1, 0]  # rank 0 alone exported
    pipe = DiffusionPipeline.from_pretrained(out / "pipeline")
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    # the exported UNet is the gathered EMA of the sharded student: the final sharded checkpoint's EMA, whole
    dcp_to_torch_save(checkpoint, tmp_path / "whole.pt")
    ema = torch.load(tmp_path / "whole.pt", weights_only=False)["ema"]
    exported = pipe.unet.state_dict()
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    teacher_unet = DiffusionPipeline.from_pretrained(teacher).unet.state_dict()
    assert any(not torch.equal(exported[k], teacher_unet[k]) for k in ema)  # trained, not the teacher's copy
    # evaluation during training ran on both ranks (sharded forwards); only rank 0 wrote files
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step-0000001.png", "step-0000002.png"]
    for name in ("metrics.json", "grid.png", "curves.png", "config.yaml", "pipeline/README.md"):
        assert (out / name).is_file(), name
    assert "| student |" in (out / "pipeline" / "README.md").read_text()


def test_unsharded_copy_rebuilds_a_lora_student_whose_export_merges_it():
    """Rank 0's copy of a (sharded) LoRA student: the class and config rebuilt, the adapters re-added, the
    gathered weights loaded as they are; its merged export equals the student's own."""
    from gendistill.backends.lora import lora_student, merge_lora
    from gendistill.jobs.distill.run import unsharded_copy
    from tiny_pipelines import tiny_unet

    student = lora_student(tiny_unet(), rank=4)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_()  # non-zero adapters, so the merge changes the weights
    gathered = {k: v.clone() for k, v in student.state_dict().items()}
    copy = unsharded_copy(student, gathered)
    assert type(copy) is type(student) and not any(p.is_meta for p in copy.parameters())
    merged, reference = merge_lora(copy).state_dict(), merge_lora(student).state_dict()
    assert merged.keys() == reference.keys() == tiny_unet().state_dict().keys()
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
