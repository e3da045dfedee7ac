"""Benchmark: text-guided editing of shapes renders, LUSD against plain SDS and DDS, side by side.

    python benchmarks/score_2d_edit.py [--edits 20] [--methods lusd,dds,sds] [--set KEY=VALUE ...]

Each edit renders a held-out shape (ray caster), then asks for a new colour (even edits) or a new shape (odd
edits) with the source caption as the source prompt. Success: the shapes classifier reads the target caption
(shape and colour) in the edited image. Background PSNR: against the source image, over the pixels outside both
the source's and the target's objects (exact masks from the ray caster, same camera); the mask's Pearson
correlation with those objects says whether LUSD's attention mask finds them. The methods are the
shipped presets ``configs/edit/shapes-edit-<method>.yaml``; ``--set`` overrides all of them. Writes
score_2d_edit.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def edit_pairs(n: int):
    """``n`` (source scene, target scene, camera): colour changes on even indices, shape changes on odd."""
    import torch

    from gendistill.domains.shapes.camera import sample_cameras
    from gendistill.domains.shapes.scene import COLOURS, SHAPES, Scene

    g = torch.Generator().manual_seed(16)
    colours = list(COLOURS)
    cams = sample_cameras(n, g)
    pairs = []
    for i in range(n):
        shape, colour = SHAPES[i // 2 % len(SHAPES)], colours[(3 * i) % len(colours)]
        if i % 2 == 0:
            target = Scene(shape, colours[(colours.index(colour) + 1 + i // 2 % (len(colours) - 1)) % len(colours)])
        else:
            target = Scene(SHAPES[(SHAPES.index(shape) + 1 + i // 2 % (len(SHAPES) - 1)) % len(SHAPES)], colour)
        pairs.append((Scene(shape, colour), target, cams[i]))
    return pairs


def background_psnr(edited, source, outside) -> float:
    """PSNR (dB) of ``edited`` against ``source`` over the pixels where ``outside`` (H, W) is true."""
    err = ((edited - source) ** 2).mean(dim=0)[outside].mean().item()
    return math.inf if err == 0 else 10 * math.log10(1.0 / err)


def correlation(mask, union) -> float:
    """Pearson correlation of the edit's mask with the objects' union (0 for a constant mask: no mask)."""
    if mask.std() < 1e-4:
        return 0.0
    x, y = mask - mask.mean(), union - union.mean()
    return (x * y).sum().item() / (x.norm() * y.norm()).item()


def run_method(method: str, pairs, overrides: list[str], classifier) -> dict:
    import torch

    from gendistill.domains.shapes import caption, render_batch
    from gendistill.domains.shapes.metrics import prompt_accuracy
    from gendistill.jobs.score_2d.edit import load_edit_config, run_edit

    config = load_edit_config(ROOT / "gendistill" / "configs" / "edit" / f"shapes-edit-{method}.yaml",
                              ["progress=false", "run.checkpoint_every=0", *overrides])
    rows = []
    for source, target, cam in pairs:
        src, tgt = render_batch([source], [cam]), render_batch([target], [cam])
        outside = (torch.maximum(src.alpha[0, 0], tgt.alpha[0, 0]) < 1e-3)
        start, cpu = time.perf_counter(), time.process_time()
        with tempfile.TemporaryDirectory() as out:
            result = run_edit(src.rgb[0], caption(target), config, out, source_prompt=caption(source),
                              progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        with torch.no_grad():
            read = classifier(torch.stack([result.edited, result.decoded]))
        ok = [prompt_accuracy(type(read)(read.shape_logits[i:i + 1], read.colour_logits[i:i + 1],
                                         read.features[i:i + 1]), [target]) for i in range(2)]
        union = torch.maximum(src.alpha[0, 0], tgt.alpha[0, 0])
        rows.append({"source": caption(source), "target": caption(target), "success": ok[0],
                     "mask_correlation": correlation(result.mask, union),
                     "success_decoded": ok[1], "background_psnr": background_psnr(result.edited, src.rgb[0], outside),
                     "background_psnr_decoded": background_psnr(result.decoded, src.rgb[0], outside),
                     "seconds": seconds, "cpu_seconds": cpu})
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {"method": method, "edits": rows, "success_rate": mean("success"),
            "mask_correlation": mean("mask_correlation"),
            "success_rate_decoded": mean("success_decoded"), "background_psnr": mean("background_psnr"),
            "background_psnr_decoded": mean("background_psnr_decoded"),
            "min_background_psnr": min(r["background_psnr"] for r in rows),
            "seconds_per_edit": mean("seconds"), "cpu_seconds_per_edit": mean("cpu_seconds")}


def main(argv=None) -> int:
    from gendistill.compat import prepare_process

    prepare_process()
    import torch

    from gendistill.domains.shapes.classifier import load_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--methods", default="lusd,dds,sds")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs, classifier = edit_pairs(args.edits), load_classifier()
    results = [run_method(m, pairs, args.overrides, classifier) for m in args.methods.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"edits": args.edits, "threads": args.threads, "overrides": args.overrides, "methods": results}
    (out / "score_2d_edit.json").write_text(json.dumps(payload, indent=2))
    lines = ["| method | success | background PSNR (dB, mean / min) | success, decoded | background PSNR, decoded "
             "| mask vs objects (corr.) | s / edit (CPU s) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['success_rate']:.2f} | {r['background_psnr']:.1f} / "
                     f"{r['min_background_psnr']:.1f} | {r['success_rate_decoded']:.2f} | "
                     f"{r['background_psnr_decoded']:.1f} | {r['mask_correlation']:.2f} | {r['seconds_per_edit']:.1f} ({r['cpu_seconds_per_edit']:.1f}) |")
    text = "\n".join(lines)
    (out / "score_2d_edit.md").write_text(f"Editing {args.edits} shapes renders ({args.threads} thread):\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
