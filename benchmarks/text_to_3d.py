"""Benchmark: text-to-3D on the shapes world, every method x representation x model x prompt x seed.

    OMP_NUM_THREADS=1 python benchmarks/text_to_3d.py [--methods sds,vsd] [--representations gaussians,nerf]
        [--models teacher,dmd2] [--prompts "a red sphere;a blue cube"] [--seeds 0,1,2] [--set k=v ...] [--resume]

Each row is one ``run_text_to_3d`` call with configs/text-to-3d/shapes-<method>[-<representation>].yaml (plus ``--set``), scored by
the existing eval-3d metrics on the 8 held-out cameras (silhouette IoU, colour error, prompt accuracy), timed
(wall-clock and process CPU time) and checked against issue 5's targets: within 5 minutes, IoU >= 0.75, prompt
accuracy >= 0.8. Every finished row is merged into text_to_3d.json at once (under a lock: several processes may
share it), so a crash loses nothing, and ``--resume`` skips the rows already there; text_to_3d.md (tables and a
summary of the targets) is rebuilt from the whole JSON after every row. Run folders (scene.ply, turntable,
held-out views) go under --runs-dir.

The report's sections live beside this file: diversity across seeds (text_to_3d_diversity.py), structure-aware
SDS (text_to_3d_structure.py) and distilled priors (text_to_3d_priors.py).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ("a red sphere", "a blue cube", "a green cylinder", "a yellow cone", "a purple torus")
"""One caption per shape of the shapes world, each in a different colour."""
MODELS = {"teacher": "assets/shapes-teacher", "dmd2": "assets/shapes-dmd2-1step",
          "dmd2-4step": "assets/shapes-dmd2-4step", "progressive": "assets/shapes-progressive-4step",
          "phased-dmd": "assets/shapes-phased-dmd-4step", "boot": "assets/shapes-boot-1step",
          "lcm": "assets/shapes-lcm-4step", "lcm-lora": "assets/shapes-lcm-lora", "multi-cfg": "assets/shapes-multi-cfg",
          "koala": "assets/shapes-koala", "koala-dmd2": "assets/shapes-koala-dmd2-1step",
          "flow-teacher": "assets/shapes-flow-teacher", "meanflow": "assets/shapes-meanflow",
          "dmd2-cfg": ("assets/shapes-dmd2-1step", ["model_guidance=cfg"]),
          "progressive-cfg": ("assets/shapes-progressive-4step", ["model_guidance=cfg"]),
          "koala-dmd2-cfg": ("assets/shapes-koala-dmd2-1step", ["model_guidance=cfg"])}
"""The ``--models`` names: the shipped teacher (``dmd2``: its 1-step DMD2 student, the first student measured) and
every shipped student, each guided as its card says (``model_guidance: auto``); a ``-cfg`` name is a
guidance-distilled student with classifier-free guidance on top (two passes). A value is the model's folder, or
(folder, config overrides)."""


def model_overrides(name: str) -> list[str]:
    """The config overrides that make ``--models`` name ``name``: its model, and any setting it carries."""
    entry = MODELS[name]
    folder, extra = (entry, []) if isinstance(entry, str) else entry
    return [f"model={ROOT / folder}", *extra]
METHODS = ("sds", "vsd", "csd", "npg", "sds-rgbd")
RESULTS_NAME = "text_to_3d"
"""The results' file names in --out (``--results-name``: e.g. text_to_3d_priors for the student-prior sweep)."""
TARGET_SECONDS, TARGET_IOU, TARGET_ACCURACY = 300.0, 0.75, 0.8
"""Issue 5: SDS on Gaussians, 2 CPU cores, IoU >= 0.75 and prompt accuracy >= 0.8 within 5 minutes."""


@dataclass(frozen=True)
class RowSpec:
    """One benchmark row: what is run."""

    method: str
    representation: str
    model: str
    prompt: str
    seed: int
    tag: str = ""
    """Tells rows of other settings apart (``--tag``, e.g. it300 for a 300-iteration sweep beside the preset's)."""

    @property
    def key(self) -> str:
        return f"{self.method}|{self.representation}|{self.model}|{self.prompt}|{self.seed}" + (
            f"|{self.tag}" if self.tag else "")

    @property
    def slug(self) -> str:
        return (f"{self.method}-{self.representation}-{self.model}-{self.prompt.replace(' ', '_')}-s{self.seed}"
                + (f"-{self.tag}" if self.tag else ""))


def targets_met(seconds: float, iou: float, accuracy: float | None) -> dict[str, bool]:
    """Which of issue 5's targets one run meets (a missing prompt accuracy meets nothing)."""
    met = {"time": seconds <= TARGET_SECONDS, "iou": iou >= TARGET_IOU,
           "accuracy": accuracy is not None and accuracy >= TARGET_ACCURACY}
    met["all"] = all(met.values())
    return met


def nerf_unavailable() -> str | None:
    """Why nerf rows cannot run here (None when they can): the text-to-3D config must accept
    ``scene: {kind: nerf}`` and nerfstudio must import."""
    from gendistill.jobs.text_to_3d import config as t3d_config

    if "nerf" not in getattr(t3d_config, "REPRESENTATIONS", ()):
        return "the text-to-3D config does not accept scene kind nerf"
    if importlib.util.find_spec("nerfstudio") is None:
        return "nerfstudio is not installed in this Python (install gendistill[nerf])"
    return None


def warm_imports() -> None:
    """Import what every row loads (diffusers' pipelines and models) before the first row's clock starts: else
    the first row alone pays some 15 CPU-seconds of imports."""
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel  # noqa: F401

    from gendistill.jobs.text_to_3d.run import run_text_to_3d  # noqa: F401


def run_row(spec: RowSpec, overrides: list[str], runs_dir: Path, progress: bool) -> dict:
    """Run one row with the library API and return its JSON record (status "failed" with the error on a crash)."""
    import torch

    from gendistill.jobs.text_to_3d.config import load_text3d_config
    from gendistill.jobs.text_to_3d.run import run_text_to_3d

    presets = ROOT / "configs" / "text-to-3d"
    preset = presets / f"shapes-{spec.method}-{spec.representation}.yaml"  # e.g. the tuned shapes-sds-nerf.yaml
    preset = preset if preset.is_file() else presets / f"shapes-{spec.method}.yaml"
    config = load_text3d_config(preset, [f"scene.kind={spec.representation}", *model_overrides(spec.model),
                                         f"seed={spec.seed}", *overrides])
    record = {**asdict(spec), "key": spec.key, "run_dir": str(runs_dir / spec.slug), "overrides": overrides,
              "iterations": config.iterations, "threads": torch.get_num_threads(),
              "load_before": round(os.getloadavg()[0], 2)}
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = run_text_to_3d(spec.prompt, config, runs_dir / spec.slug, progress=progress)
    except Exception as err:  # noqa: BLE001 - a failed row is recorded, the benchmark goes on
        return {**record, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    seconds = time.perf_counter() - wall
    ev = result.evaluation
    return {**record, "status": "ok", "seconds": round(seconds, 1), "loop_seconds": round(result.seconds, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1), "load_after": round(os.getloadavg()[0], 2),
            "num_gaussians": result.num_gaussians, "skipped_steps": result.skipped_steps,
            "steps": getattr(result, "steps", None), "stopped": getattr(result, "stopped", None),
            "iou": ev.iou, "colour_error": ev.colour_error, "prompt_accuracy": ev.prompt_accuracy,
            "shape_accuracy": ev.shape_accuracy, "colour_accuracy": ev.colour_accuracy,
            "depth_error": ev.depth_error, "floaters": ev.floaters,
            "model_guidance": _section("text_to_3d_priors").run_guidance(runs_dir / spec.slug),
            "targets": targets_met(seconds, ev.iou, ev.prompt_accuracy)}


def _means(rows: list[dict]) -> dict[str, float]:
    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    return {"iou": mean("iou"), "colour_error": mean("colour_error"), "prompt_accuracy": mean("prompt_accuracy"),
            "seconds": mean("seconds"), "cpu_seconds": mean("cpu_seconds")}


def _model_order(name: str) -> int:
    return list(MODELS).index(name) if name in MODELS else len(MODELS)


@functools.cache
def _section(name: str):
    """A section of this benchmark's report (benchmarks/<name>.py), loaded from this folder once, on first use
    (after ``main`` has prepared the process: a section may import gendistill)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def format_markdown(data: dict) -> str:
    """The README-ready tables and the summary of the targets."""
    rows = [r for r in data["rows"] if r["status"] == "ok"]
    lines = ["### Text-to-3D on the shapes world", "",
             f"Held-out metrics of eval-3d (8 cameras). Targets: IoU >= {TARGET_IOU}, prompt accuracy >= "
             f"{TARGET_ACCURACY}, wall-clock <= {TARGET_SECONDS:.0f} s. {data.get('machine', '')}", "",
             "| method | repr. | model | prompt | seed | IoU | colour err | prompt acc | wall s | CPU s | "
             "time / IoU / acc met |", "|" + "---|" * 11]
    for r in sorted(rows, key=lambda r: (METHODS.index(r["method"]), r["representation"], _model_order(r["model"]),
                                         PROMPTS.index(r["prompt"]) if r["prompt"] in PROMPTS else 9, r["seed"])):
        t = r["targets"]
        acc = "n/a" if r["prompt_accuracy"] is None else f"{r['prompt_accuracy']:.3f}"
        lines.append(f"| {r['method']} | {r['representation']} | {r['model']} | {r['prompt']} | {r['seed']} | "
                     f"{r['iou']:.3f} | {r['colour_error']:.3f} | {acc} | {r['seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} | {_mark(t['time'])} / {_mark(t['iou'])} / {_mark(t['accuracy'])} |")
    diversity = _section("text_to_3d_diversity").diversity_table(data.get("diversity", []))
    lines += ["", *_method_table(rows), "", *diversity, "",
              *_section("text_to_3d_structure").structure_table(rows), "",
              *_section("text_to_3d_priors").priors_table(rows), "",
              "**Targets**", "", *summary_lines(rows, data.get("diversity", []))]
    if not any(r["representation"] == "nerf" for r in rows):
        lines += ["- NeRF: no rows measured yet; they run with `--representations gaussians,nerf` in a Python that "
                  "has nerfstudio (the `nerf` extra)"]
    failed = [r for r in data["rows"] if r["status"] != "ok"]
    notes = [f"- failed: {r['key']}: {r['error']}" for r in failed] + [f"- {n}" for n in data.get("notes", [])]
    return "\n".join(lines + (["", "**Notes**", "", *notes] if notes else [])) + "\n"


def _method_table(rows: list[dict]) -> list[str]:
    lines = ["Every method x representation x model (means over its rows):", "",
             "| method | repr. | model | runs | mean IoU | mean prompt acc | mean wall s | mean CPU s | "
             "all targets met |", "|" + "---|" * 9]
    keys = sorted({(r["method"], r["representation"], r["model"]) for r in rows},
                  key=lambda k: (METHODS.index(k[0]), k[1], _model_order(k[2])))
    for method, rep, model in keys:
        group = [r for r in rows if (r["method"], r["representation"], r["model"]) == (method, rep, model)]
        m = _means(group)
        lines.append(f"| {method} | {rep} | {model} | {len(group)} | {m['iou']:.3f} | {m['prompt_accuracy']:.3f} | "
                     f"{m['seconds']:.0f} | {m['cpu_seconds']:.0f} | {sum(r['targets']['all'] for r in group)}/{len(group)} |")
    return lines


def summary_lines(rows: list[dict], groups: list[dict]) -> list[str]:
    """Which of issue 5's targets the measured rows meet."""
    out = []
    sds = {r["prompt"]: r for r in rows if (r["method"], r["representation"], r["model"], r["seed"])
           == ("sds", "gaussians", "teacher", 0)}
    met = [p for p in PROMPTS if p in sds and sds[p]["targets"]["all"]]
    missed = [p for p in PROMPTS if p in sds and p not in met]
    absent = [p for p in PROMPTS if p not in sds]
    on_cpu = [p for p in sds if targets_met(sds[p]["cpu_seconds"], sds[p]["iou"], sds[p]["prompt_accuracy"])["all"]]
    out.append(f"- SDS, Gaussians, teacher, seed 0: {len(met)}/{len(PROMPTS)} shapes meet all three targets"
               + (f"; missed: {', '.join(missed)}" if missed else "") + (f"; not run: {', '.join(absent)}"
                                                                         if absent else "")
               + f" (counting CPU s instead of wall s as the time: {len(on_cpu)}/{len(PROMPTS)})")
    by_key = {(g["method"], g["representation"], g["model"], g["prompt"]): g for g in groups}
    for (method, rep, model, prompt), vsd in by_key.items():
        sds_group = by_key.get(("sds", rep, model, prompt))
        if method != "vsd" or sds_group is None:
            continue
        equal = abs(vsd["iou"] - sds_group["iou"]) <= 0.05 and abs(vsd["prompt_accuracy"] -
                                                                   sds_group["prompt_accuracy"]) <= 0.125
        more = vsd["render_diversity"] > sds_group["render_diversity"]
        out.append(f"- VSD vs SDS ({prompt}, {rep}, {model}): render diversity {vsd['render_diversity']:.4f} vs "
                   f"{sds_group['render_diversity']:.4f}, mean IoU {vsd['iou']:.3f} vs {sds_group['iou']:.3f}, "
                   f"prompt acc {vsd['prompt_accuracy']:.3f} vs {sds_group['prompt_accuracy']:.3f}: "
                   f"{'more' if more else 'not more'} diverse, quality "
                   f"{'equal' if equal else 'not equal'} (within 0.05 IoU and 0.125 accuracy)")
    student = [r for r in rows if (r["method"], r["model"]) == ("sds", "dmd2")]
    if student:
        m_s, m_t = _means(student), _means([sds[r["prompt"]] for r in student if r["prompt"] in sds] or student)
        out.append(f"- SDS with the DMD2 student ({len(student)} runs): mean IoU {m_s['iou']:.3f}, prompt acc "
                   f"{m_s['prompt_accuracy']:.3f}, {m_s['cpu_seconds']:.0f} CPU s; the teacher on the same prompts: "
                   f"IoU {m_t['iou']:.3f}, prompt acc {m_t['prompt_accuracy']:.3f}, {m_t['cpu_seconds']:.0f} CPU s; "
                   f"student rows meeting all targets: {sum(r['targets']['all'] for r in student)}/{len(student)}")
    return out


def plan(args) -> tuple[list[RowSpec], list[str]]:
    """The rows the arguments ask for, and notes on the ones that cannot run here."""
    reps, notes = args.representations.split(","), []
    if "nerf" in reps and (why := nerf_unavailable()) is not None:
        reps.remove("nerf")
        notes.append(f"nerf rows skipped: {why}")
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    specs = [RowSpec(m, r, model, p, int(s), args.tag) for m in args.methods.split(",") for r in reps
             for model in args.models.split(",") for p in prompts for s in args.seeds.split(",")]
    return specs, notes


def save(data: dict, out: Path) -> None:
    """Write the JSON and rebuild the markdown from it."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULTS_NAME}.json").write_text(json.dumps(data, indent=2))
    (out / f"{RESULTS_NAME}.md").write_text(format_markdown(data))


def merge_rows(rows: list[dict], record: dict) -> list[dict]:
    """``rows`` with ``record`` in place of any earlier row of its key."""
    return [r for r in rows if r["key"] != record["key"]] + [record]


def record_row(out: Path, record: dict | None, header: dict) -> dict:
    """Under a file lock (several benchmark processes may share one JSON): re-read the JSON, put ``record`` in,
    update the header keys (machine, notes), recompute the diversity and save; returns the data written."""
    import fcntl
    import hashlib
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"{RESULTS_NAME}-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = out / f"{RESULTS_NAME}.json"
        data = json.loads(path.read_text()) if path.is_file() else {"rows": [], "notes": []}
        data["notes"] = sorted(set(data.get("notes", [])) | set(header.get("notes", [])))
        if header.get("machine"):
            data["machine"] = header["machine"]
        if record is not None:
            data["rows"] = merge_rows(data["rows"], record)
        data["diversity"] = _section("text_to_3d_diversity").diversity_groups(data["rows"], _means)
        save(data, out)
    return data


def main(argv=None) -> int:
    global RESULTS_NAME  # --results-name: the files every helper below reads and writes
    from gendistill.compat import prepare_process

    prepare_process()  # as the gendistill command does: the torchvision shim, passive OpenMP waits
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sds", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--representations", default="gaussians", help="gaussians or gaussians,nerf")
    parser.add_argument("--models", default="teacher", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--prompts", default=";".join(PROMPTS), help="semicolon list of shapes captions")
    parser.add_argument("--seeds", default="0", help="comma list of seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every row (repeatable)")
    parser.add_argument("--resume", action="store_true", help="skip the rows the JSON has finished (without it, "
                        "they are run again and replaced; the JSON's other rows are always kept)")
    parser.add_argument("--fresh", action="store_true", help="start from an empty JSON")
    parser.add_argument("--report-only", action="store_true", help="rebuild the markdown from the JSON, run nothing")
    parser.add_argument("--machine-note", default="", help="what the wall-clock was measured beside")
    parser.add_argument("--progress", action="store_true", help="show each run's progress bar")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench-text-to-3d"))
    parser.add_argument("--tag", default="", help="added to each row's key and folder: rows of other settings "
                        "(--set iterations=...) beside the default ones")
    parser.add_argument("--results-name", default=RESULTS_NAME, help="file names of the JSON and markdown in --out")
    args = parser.parse_args(argv)
    RESULTS_NAME = args.results_name

    import torch

    out = Path(args.out)
    if args.report_only:
        record_row(out, None, {})
        return 0
    if args.fresh:
        (out / f"{RESULTS_NAME}.json").unlink(missing_ok=True)
    specs, notes = plan(args)
    header = {"notes": notes, "machine": (
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s); wall s is pessimistic where other "
        f"jobs shared the cores (1-minute load average per row in the JSON), CPU s is the run's own process CPU "
        f"time. {args.machine_note}").strip()}
    data = record_row(out, None, header)
    warm_imports()
    for spec in specs:
        path = out / f"{RESULTS_NAME}.json"
        if args.resume and spec.key in {r["key"] for r in json.loads(path.read_text())["rows"] if r["status"] == "ok"}:
            print(f"skip (done): {spec.key}", flush=True)
            continue
        print(f"run: {spec.key}", flush=True)
        record = run_row(spec, args.overrides, Path(args.runs_dir), args.progress)
        data = record_row(out, record, header)
        print(json.dumps({k: record.get(k) for k in ("status", "iou", "prompt_accuracy", "colour_error",
                                                     "seconds", "cpu_seconds", "targets", "error")}), flush=True)
    print(format_markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
