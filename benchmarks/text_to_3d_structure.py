"""The structure-aware SDS section of benchmarks/text_to_3d.py (issue 17): each sds-rgbd row against the SDS row
of the same representation, model, prompt and seed, and the issue's four comparisons over those pairs."""

from __future__ import annotations

RGBD_DEPTH_GAIN, RGBD_FLOATER_CUT, RGBD_TIME_RATIO = 0.20, 0.50, 1.2
"""Issue 17: structure-aware SDS against SDS on the five shapes: mean depth error >= 20% lower, IoU not lower,
floaters >= 50% fewer, within 1.2x SDS's time."""


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def structure_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(SDS row, structure-aware SDS row) of the same representation, model, prompt and seed, both with depth."""
    sds = {(r["representation"], r["model"], r["prompt"], r["seed"]): r for r in rows
           if r["method"] == "sds" and r.get("depth_error") is not None}
    return [(sds[k], r) for r in rows if r["method"] == "sds-rgbd" and r.get("depth_error") is not None
            and (k := (r["representation"], r["model"], r["prompt"], r["seed"])) in sds]


def structure_summary(pairs: list[tuple[dict, dict]]) -> dict:
    """Issue 17's four comparisons over the pairs: depth error gain, IoU, floater cut, CPU-time ratio."""
    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    base, rgbd = [p[0] for p in pairs], [p[1] for p in pairs]
    floaters = sum(r["floaters"] for r in base), sum(r["floaters"] for r in rgbd)
    out = {"pairs": len(pairs), "depth_error": (mean(base, "depth_error"), mean(rgbd, "depth_error")),
           "iou": (mean(base, "iou"), mean(rgbd, "iou")), "floaters": floaters,
           "cpu_seconds": (mean(base, "cpu_seconds"), mean(rgbd, "cpu_seconds"))}
    out["depth_gain"] = 1 - out["depth_error"][1] / out["depth_error"][0]
    out["floater_cut"] = 1 - floaters[1] / floaters[0] if floaters[0] else float("nan")
    out["time_ratio"] = out["cpu_seconds"][1] / out["cpu_seconds"][0]
    return out


def structure_table(rows: list[dict]) -> list[str]:
    pairs = structure_pairs(rows)
    if not pairs:
        return ["No structure-aware SDS row has its SDS twin yet: no structure comparison."]
    lines = ["Structure-aware SDS (sds-rgbd) against SDS, same prompt, model and seed (depth error: mean |expected "
             "- analytic depth| inside both silhouettes, camera units; floaters: Gaussians with opacity > 0.1 "
             "outside the bounding sphere):", "",
             "| prompt | seed | depth err SDS | depth err RGBD | IoU SDS | IoU RGBD | floaters SDS | floaters RGBD | "
             "CPU s SDS | CPU s RGBD |", "|" + "---|" * 10]
    for base, rgbd in pairs:
        lines.append(f"| {base['prompt']} | {base['seed']} | {base['depth_error']:.4f} | {rgbd['depth_error']:.4f} | "
                     f"{base['iou']:.3f} | {rgbd['iou']:.3f} | {base['floaters']} | {rgbd['floaters']} | "
                     f"{base['cpu_seconds']:.0f} | {rgbd['cpu_seconds']:.0f} |")
    s = structure_summary(pairs)
    lines += ["", f"- over {s['pairs']} pairs: depth error {s['depth_error'][0]:.4f} -> {s['depth_error'][1]:.4f} "
              f"({100 * s['depth_gain']:.0f}% lower; target >= {100 * RGBD_DEPTH_GAIN:.0f}%: "
              f"{_mark(s['depth_gain'] >= RGBD_DEPTH_GAIN)}), mean IoU {s['iou'][0]:.3f} -> {s['iou'][1]:.3f} "
              f"(not lower: {_mark(s['iou'][1] >= s['iou'][0])}), floaters {s['floaters'][0]} -> {s['floaters'][1]} "
              f"(>= {100 * RGBD_FLOATER_CUT:.0f}% fewer: {_mark(s['floater_cut'] >= RGBD_FLOATER_CUT)}), CPU time "
              f"{s['time_ratio']:.2f}x (<= {RGBD_TIME_RATIO}x: {_mark(s['time_ratio'] <= RGBD_TIME_RATIO)})"]
    return lines
