"""Benchmark: ``gendistill edit-3d`` (GSEditPro) against unlocalised SDS editing, on two-object scenes.

    OMP_NUM_THREADS=1 python benchmarks/edit_3d.py [--rows unlocalised,gseditpro,oracle] [--edits 6] [--resume]
        [--objects-dir /work/runs/edit3d-objects] [--runs-dir /work/runs/edit3d-bench] [--set KEY=VALUE ...]

Scenes: two text-to-3D results (``gendistill text-to-3d CAPTION --seed 0``, made on first use and cached in
``--objects-dir``) scaled by 0.7 and set side by side at y = -0.55 and y = +0.55 (the front camera looks along
-x, so they stand left and right of each other), merged into one PLY (``render.gaussian_sets.merge_plys``).
Each edit asks for a new colour of one of them (prompt "a green cube", target word "cube").

Rows: ``unlocalised`` (preset shapes-edit-3d-unlocalised: SDS on every Gaussian), ``gseditpro`` (shapes-edit-3d:
attention-based progressive localisation, masked updates, pseudo-ground-truth term) and ``oracle`` (the same
edit with the selection fixed to the target object's Gaussians: what the editing does when the localisation is
perfect). Measures, per edit, from the 8 held-out cameras of eval-3d:

- **target views right**: the target object's own Gaussians (each edited Gaussian is labelled with the object
  of its nearest original Gaussian: unselected ones never move, clones stay near their parent), moved back to
  the origin at full size, rendered and read by the shapes classifier: views whose colour is the prompt's;
- **other PSNR**: the other object's Gaussians, moved back the same way, rendered after against before (dB,
  the views' pooled MSE; inf when unchanged);
- **selection on target / of target**: precision and recall of the final selection against the target object.

Targets (issue 17): target colour right in >= 7 of 8 views and other PSNR >= 30 dB; unlocalised should change
both. Writes benchmarks/results/edit_3d.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENES = {"cube-sphere": ("a red cube", "a blue sphere"), "cylinder-cone": ("a green cylinder", "a purple cone")}
EDITS = [("cube-sphere", 0, "a green cube", "cube"), ("cube-sphere", 1, "a yellow sphere", "sphere"),
         ("cylinder-cone", 0, "a red cylinder", "cylinder"), ("cylinder-cone", 1, "a yellow cone", "cone"),
         ("cube-sphere", 0, "a yellow cube", "cube"), ("cylinder-cone", 1, "a blue cone", "cone")]
SCALE, OFFSET = 0.7, 0.55
"""Each object is scaled by SCALE and set at y = -OFFSET (left in the front view) or +OFFSET (right)."""
ROWS = {"unlocalised": "shapes-edit-3d-unlocalised", "gseditpro": "shapes-edit-3d", "oracle": "shapes-edit-3d"}


def placements():
    from gendistill.render.gaussian_sets import Placement

    return (Placement(SCALE, (0.0, -OFFSET, 0.0)), Placement(SCALE, (0.0, OFFSET, 0.0)))


def ensure_object(caption: str, objects_dir: Path) -> Path:
    """The text-to-3D scene of ``caption`` (seed 0), made with the command when it is not cached."""
    out = objects_dir / caption.removeprefix("a ").replace(" ", "-")
    if not (out / "scene.ply").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run([sys.executable, "-m", "gendistill", "text-to-3d", caption, "--seed", "0", "--out", str(out)],
                       check=True, env=env)
    return out / "scene.ply"


def build_scene(name: str, objects_dir: Path, runs_dir: Path):
    """The merged two-object PLY of scene ``name`` and each Gaussian's object index (0 left, 1 right)."""
    from gendistill.render.gaussian_sets import merge_plys

    paths = [ensure_object(caption, objects_dir) for caption in SCENES[name]]
    return merge_plys(paths, placements(), runs_dir / "scenes" / f"{name}.ply")


def object_labels(params, original, labels):
    """Each Gaussian of ``params`` labelled with the object of its nearest Gaussian in ``original``."""
    import torch

    means, ref = params.means.detach(), original.means.detach()
    nearest = torch.cat([torch.cdist(chunk, ref).argmin(dim=1) for chunk in means.split(2048)])
    return labels[nearest]


def object_renders(params, labels, index: int):
    """The held-out renders (8, 3, 64, 64) of object ``index``'s Gaussians, moved back to the origin."""
    import torch

    from gendistill.jobs.text_to_3d.evaluate3d import heldout_cameras
    from gendistill.render.cameras import stack_cameras
    from gendistill.render.gaussian_sets import gaussian_subset, placed_gaussians
    from gendistill.render.gaussians import GaussianRenderer

    own = placed_gaussians(gaussian_subset(params, labels == index), placements()[index].inverse())
    with torch.no_grad():
        return GaussianRenderer().render(own, stack_cameras(heldout_cameras()), torch.ones(3)).rgb.clamp(0, 1)


def psnr(a, b) -> float:
    err = ((a - b) ** 2).mean().item()
    return math.inf if err == 0 else 10 * math.log10(1.0 / err)


def measure(result, labels0, target: int, prompt: str, classifier) -> dict:
    from gendistill.domains.shapes import parse_caption
    from gendistill.domains.shapes.scene import COLOURS

    labels = object_labels(result.params, result.original, labels0)
    colours = list(COLOURS)
    wanted = parse_caption(prompt).colour
    read = [colours[i] for i in classifier.classify(object_renders(result.params, labels, target)).colour_logits
            .argmax(dim=1).tolist()]
    before_read = [colours[i] for i in classifier.classify(object_renders(result.original, labels0, target))
                   .colour_logits.argmax(dim=1).tolist()]
    other = 1 - target
    other_psnr = psnr(object_renders(result.params, labels, other), object_renders(result.original, labels0, other))
    selected, on_target = result.selected, labels == target
    both = int((selected & on_target).sum())
    return {"target_views_right": sum(c == wanted for c in read), "target_read": read,
            "target_read_before": before_read, "other_psnr": other_psnr, "selected": int(selected.sum()),
            "gaussians": len(labels), "selection_on_target": both / max(1, int(selected.sum())),
            "selection_of_target": both / max(1, int(on_target.sum()))}


def run_one(row: str, edit: tuple, scene_path: Path, labels0, overrides: list[str], out: Path, classifier) -> dict:
    from gendistill.jobs.edit_3d.config import load_edit3d_config
    from gendistill.jobs.edit_3d.run import run_edit_3d

    name, target, prompt, word = edit
    config = load_edit3d_config(ROOT / "gendistill" / "configs" / "edit-3d" / f"{ROWS[row]}.yaml",
                                ["progress=false", "run.checkpoint_every=0", *overrides])
    selection = (labels0 == target) if row == "oracle" else None
    start, cpu = time.perf_counter(), time.process_time()
    result = run_edit_3d(scene_path, prompt, word, config, out, progress=False, selection=selection)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"row": row, "scene": name, "prompt": prompt, "target": word, "iterations": config.iterations,
            **measure(result, labels0, target, prompt, classifier), "wall_s": round(seconds, 1), "cpu_s": round(cpu, 1)}


def summary(results: list[dict], row: str) -> dict:
    rows = [r for r in results if r["row"] == row]
    finite = [min(r["other_psnr"], 99.0) for r in rows]
    return {"row": row, "edits": len(rows),
            "target_right_7of8": sum(r["target_views_right"] >= 7 for r in rows),
            "mean_target_views_right": sum(r["target_views_right"] for r in rows) / max(1, len(rows)),
            "other_psnr_30": sum(r["other_psnr"] >= 30 for r in rows),
            "mean_other_psnr": sum(finite) / max(1, len(finite)), "min_other_psnr": min(finite, default=math.nan),
            "both_targets": sum(r["target_views_right"] >= 7 and r["other_psnr"] >= 30 for r in rows),
            "mean_selection_on_target": sum(r["selection_on_target"] for r in rows) / max(1, len(rows)),
            "mean_cpu_s": sum(r["cpu_s"] for r in rows) / max(1, len(rows))}


def markdown(results: list[dict], command: str) -> str:
    lines = [f"# edit-3d (GSEditPro) on two-object scenes\n\n`{command}`\n",
             ("| row | edits | target colour >= 7/8 views | mean views right | other PSNR >= 30 dB | other PSNR mean / "
              "min (dB, 99 = unchanged) | both targets | selection on target | CPU s / edit |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for row in dict.fromkeys(r["row"] for r in results):
        s = summary(results, row)
        lines.append(f"| {row} | {s['edits']} | {s['target_right_7of8']} | {s['mean_target_views_right']:.1f} | "
                     f"{s['other_psnr_30']} | {s['mean_other_psnr']:.1f} / {s['min_other_psnr']:.1f} | "
                     f"{s['both_targets']} | {s['mean_selection_on_target']:.2f} | {s['mean_cpu_s']:.0f} |")
    lines += ["", ("| row | scene | prompt | views right | read (8 views) | other PSNR | selected | on target | "
                   "of target | CPU s |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['scene']} | {r['prompt']} | {r['target_views_right']}/8 | "
                     f"{' '.join(r['target_read'])} | {r['other_psnr']:.1f} | {r['selected']}/{r['gaussians']} | "
                     f"{r['selection_on_target']:.2f} | {r['selection_of_target']:.2f} | {r['cpu_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--edits", type=int, default=len(EDITS))
    parser.add_argument("--objects-dir", type=Path, default=Path("/work/runs/edit3d-objects"))
    parser.add_argument("--runs-dir", type=Path, default=Path("/work/runs/edit3d-bench"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true", help="reuse the per-edit results already in --runs-dir")
    parser.add_argument("--name", default="edit_3d", help="results file stem in benchmarks/results/")
    args = parser.parse_args()
    from gendistill.compat import prepare_process

    prepare_process()
    from gendistill.jobs.text_to_3d.evaluate3d import load_default_classifier

    classifier = load_default_classifier()
    edits = EDITS[:args.edits]
    scenes = {name: build_scene(name, args.objects_dir, args.runs_dir) for name in dict.fromkeys(e[0] for e in edits)}
    results = []
    for row in args.rows.split(","):
        for i, edit in enumerate(edits):
            out = args.runs_dir / row / f"{i}-{edit[2].replace(' ', '-')}"
            cached = out / "bench.json"
            if args.resume and cached.is_file():
                results.append(json.loads(cached.read_text()))
                continue
            path, labels0 = scenes[edit[0]]
            results.append(run_one(row, edit, path, labels0, args.overrides, out, classifier))
            cached.write_text(json.dumps(results[-1]))
            print(json.dumps(results[-1]), flush=True)
    command = "OMP_NUM_THREADS=1 python benchmarks/edit_3d.py " + " ".join(sys.argv[1:])
    out = ROOT / "benchmarks" / "results"
    (out / f"{args.name}.json").write_text(json.dumps({"command": command, "results": results,
                                                       "summary": [summary(results, r) for r in
                                                                   dict.fromkeys(x["row"] for x in results)]},
                                                      indent=2))
    (out / f"{args.name}.md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
