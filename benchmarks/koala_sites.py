"""Benchmark: KOALA's finding in miniature: which features to distil when compressing the shapes teacher.

    python benchmarks/koala_sites.py [--steps 600] [--num-samples 480] [--runs runs/koala-sites] \
        [--sites self_attention block cross_attention none] [--out benchmarks/results]

Trains the ``shapes-koala`` preset's compressed student once per feature site (self-attention outputs as KOALA,
whole-block outputs as BK-SDM, cross-attention outputs, or output distillation only), each for the same number
of steps from the same seed and data (equal training time; each run's wall-clock is reported), then samples
every student and the teacher at 25 steps on the same prompts and seeds. A run folder that already holds a
finished student is measured, not retrained. Writes koala_sites_STEPS.json and koala_sites_STEPS.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITES = ("self_attention", "block", "cross_attention", "none")


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-samples", type=int, default=480)
    parser.add_argument("--runs", default="runs/koala-sites")
    parser.add_argument("--sites", nargs="+", choices=SITES, default=list(SITES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    trained = {site: train(site, args.steps, Path(args.runs) / site) for site in args.sites}
    rows = measure(trained, args.num_samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"koala_sites_{args.steps}.json").write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    lines = [f"Compressed shapes student (`shapes-koala` preset), {args.steps} training steps per site, "
             f"{args.num_samples} images a row at 25 steps, guidance 2, one run.", "",
             "| feature site | train s | prompt acc | FID | diversity | ms/image |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['site']} | {r['train_seconds']:.0f} | {r['prompt_accuracy']:.4f} | {r['fid']:.4f} | "
              f"{r['diversity']:.4f} | {r['ms_per_image']:.1f} |" for r in rows]
    (out / f"koala_sites_{args.steps}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def train(site: str, steps: int, out_dir: Path) -> tuple[Path, float]:
    """The student folder of ``site``'s run and its training seconds (an existing finished run is reused)."""
    from gendistill.config import load_config
    from gendistill.jobs.distill.config import DistillConfig
    from gendistill.jobs.distill.run import run_distill
    from gendistill.shipped import resolve_preset

    card = out_dir / "pipeline" / "gendistill.json"
    metrics = out_dir / "metrics.json"
    if card.is_file() and metrics.is_file() and "stopped" not in json.loads(metrics.read_text()):
        return out_dir / "pipeline", json.loads(card.read_text())["train_seconds"]
    overrides = [f"recipe.feature_site={site}", f"trainer.steps={steps}", "trainer.eval_every=0",
                 "eval.during_training_samples=0", "eval.num_samples=40", "eval.teacher_steps=[25]"]
    config = load_config(DistillConfig, resolve_preset("distill/shapes-koala"), overrides)
    result = run_distill(config, out_dir, resume=(out_dir / "checkpoints").is_dir())
    print(f"{site}: trained {steps} steps in {result.train_seconds:.0f} s", flush=True)
    return result.pipeline, result.train_seconds


def measure(trained: dict[str, tuple[Path, float]], num_samples: int) -> list[dict]:
    """The teacher and each site's student at 25 steps, guidance 2, same prompts and seeds."""
    from gendistill.backends.loading import load_pipeline
    from gendistill.backends.text_to_image import TextToImageModel
    from gendistill.domains.shapes.evaluation import ShapesEvaluator, evaluate_model
    from gendistill.shipped import resolve_model_name

    evaluator = ShapesEvaluator.load()
    entries = [("teacher (not compressed)", Path(resolve_model_name("shapes-teacher")), 0.0)]
    entries += [(site, folder, seconds) for site, (folder, seconds) in trained.items()]
    rows = []
    for label, folder, seconds in entries:
        quality = evaluate_model(TextToImageModel(load_pipeline(str(folder))), evaluator, 25, "auto", 2.0,
                                 num_samples)
        rows.append({"site": label, "train_seconds": seconds, **asdict(quality)})
        print(f"{label}: accuracy {quality.prompt_accuracy:.4f}, FID {quality.fid:.4f}", flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
