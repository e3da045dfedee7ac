"""Benchmark: training memory held by each recipe (parameters, buffers, optimizer state, EMA), in one run.

    python benchmarks/training_memory.py [--out benchmarks/results]

Each preset is built as ``gendistill distill`` builds it (its teacher, recipe, trainer) and the trainer runs
ONE step (so the optimizers hold their state); then every tensor the run holds for training is counted once:
the recipe's modules (parameters and buffers, the frozen teacher included), the optimizers' state and the EMA.
The figure to read is the ratio to the teacher network's own parameter bytes, which makes recipes on teachers
of different sizes comparable (DMD2 distils the UNet teacher; TwinFlow and MeanFlow the flow teacher); "without
EMA" is parameters plus optimizer state alone, and the last column divides each row's ratios by the first's.
Writes training_memory.json and training_memory.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("shapes-dmd2", "shapes-twinflow", "shapes-meanflow")


def held_bytes(trainer) -> dict[str, int]:
    """Bytes of distinct tensors the trainer holds: modules, optimizer state, EMA shadow."""
    seen: set[int] = set()

    def count(tensors) -> int:
        total = 0
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    modules = count(t for m in trainer.modules.values() for t in [*m.parameters(), *m.buffers()])
    optimizer = count(v for group in trainer.optimizers.values() for opt in group.values()
                      for state in opt.state.values() for v in state.values() if hasattr(v, "data_ptr"))
    ema = count(trainer.ema.shadow.parameters()) if trainer.ema is not None else 0
    return {"modules": modules, "optimizer": optimizer, "ema": ema}


def measure(preset: str) -> dict:
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.config import load_config
    from gendistill.jobs.distill.config import DistillConfig
    from gendistill.jobs.distill.run import make_batches
    from gendistill.shipped import resolve_preset
    from gendistill.train.trainer import Trainer, step_generator

    config = load_config(DistillConfig, resolve_preset(preset, "distill"),
                         ["trainer.steps=1", "trainer.checkpoint_every=0", "trainer.eval_every=0",
                          "data.batch_size=2"])
    teacher = TextToImageModel(load_pipeline(config.teacher))
    network_bytes = sum(p.numel() * p.element_size() for p in teacher.network.parameters())
    batches = make_batches(config, teacher)
    bound = config.recipe.build(teacher, lambda: batches(0, step_generator(config.trainer.seed, -1)))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(bound.recipe, config.trainer, out, batches, progress=False, log=lambda line: None)
        trainer.fit()
        held = held_bytes(trainer)
    total = sum(held.values())
    return {"preset": preset, "recipe": config.recipe.KIND, "teacher": config.teacher,
            "teacher_network_mb": network_bytes / 2**20, **{f"{k}_mb": v / 2**20 for k, v in held.items()},
            "total_mb": total / 2**20, "x_network": total / network_bytes,
            "x_network_without_ema": (held["modules"] + held["optimizer"]) / network_bytes,
            "networks_held": sorted(trainer.modules)}


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--preset", action="append", default=[], help="presets to measure (default: a set)")
    args = parser.parse_args(argv)
    rows = [measure(p) for p in (args.preset or PRESETS)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_memory.json").write_text(json.dumps(rows, indent=2))
    lines = ["| preset | recipe | modules held | modules MB | optimizer MB | EMA MB | total MB | x teacher network "
             "| without EMA | vs the first row (with EMA / without) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    first = rows[0]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['recipe']} | {', '.join(r['networks_held'])} | {r['modules_mb']:.1f} | "
                     f"{r['optimizer_mb']:.1f} | {r['ema_mb']:.1f} | {r['total_mb']:.1f} | {r['x_network']:.2f} | "
                     f"{r['x_network_without_ema']:.2f} | {r['x_network'] / first['x_network']:.2f} / "
                     f"{r['x_network_without_ema'] / first['x_network_without_ema']:.2f} |")
    text = "\n".join(lines) + "\n"
    (out / "training_memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
