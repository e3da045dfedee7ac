"""The seed-diversity section of benchmarks/text_to_3d.py (issue 5's "VSD more diverse than SDS at equal quality"):
for the runs of one method, model and prompt with different seeds, the mean absolute RGB difference between the
*same* held-out view of two runs (over all pixels of the 8 views, then over all pairs of seeds), and the same for
the L2 distance between the shapes classifier's features of those views. Both are 0 when every seed gives the same
object."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path


def mean_pairwise(items: list, distance) -> float:
    """Mean of ``distance(a, b)`` over all unordered pairs (nan with fewer than two items)."""
    pairs = list(itertools.combinations(items, 2))
    return sum(distance(a, b) for a, b in pairs) / len(pairs) if pairs else float("nan")


def seed_diversity(renders: list, features: list) -> dict[str, float]:
    """Diversity of one group of seeds from their held-out renders (V, 3, H, W) and classifier features (V, F),
    view matched: mean |RGB difference| of the same view, and mean L2 distance of the same view's features."""
    return {"render_diversity": mean_pairwise(renders, lambda a, b: (a - b).abs().mean().item()),
            "feature_diversity": mean_pairwise(features, lambda a, b: (a - b).norm(dim=1).mean().item())}


def heldout_renders(run_dir: Path):
    """The 8 held-out renders (8, 3, H, W) in [0, 1]: the top row of the run's heldout.png (a make_grid with 8
    columns and 2 px padding; the analytic object is the second row). None when the run has no heldout.png."""
    import numpy as np
    import torch
    from PIL import Image

    path = run_dir / "heldout.png"
    if not path.is_file():
        return None
    grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
    pad, views = 2, 8
    size = (grid.shape[2] - pad) // views - pad
    return torch.stack([grid[:, pad:pad + size, pad + i * (size + pad):pad + i * (size + pad) + size]
                        for i in range(views)])


def diversity_groups(rows: list[dict], quality: Callable[[list[dict]], dict]) -> list[dict]:
    """One record per (method, representation, model, prompt) with two or more finished seeds: the group's mean
    quality (``quality(rows)``, the benchmark's own means) beside the seed diversity."""
    from gendistill.jobs.text_to_3d.evaluate3d import load_default_classifier

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["method"], row["representation"], row["model"], row["prompt"]), []).append(row)
    classifier, out = None, []
    for (method, rep, model, prompt), members in sorted(groups.items()):
        renders = [r for r in (heldout_renders(Path(m["run_dir"])) for m in members) if r is not None]
        if len(members) < 2 or len(renders) < 2:
            continue
        classifier = classifier or load_default_classifier()
        features = [classifier.classify(r).features for r in renders]
        out.append({"method": method, "representation": rep, "model": model, "prompt": prompt,
                    "seeds": sorted(m["seed"] for m in members), **quality(members),
                    **seed_diversity(renders, features)})
    return out


def diversity_table(groups: list[dict]) -> list[str]:
    if not groups:
        return ["No method has two seeds of one prompt yet: no diversity numbers."]
    lines = ["Diversity across seeds (render: mean |RGB difference| of the same held-out view between two seeds; "
             "feature: mean L2 distance of the classifier features of the same view; both averaged over the 8 "
             "views and all seed pairs), beside mean quality:", "",
             "| method | repr. | model | prompt | seeds | mean IoU | mean prompt acc | render div. | feature div. |",
             "|" + "---|" * 9]
    for g in groups:
        lines.append(f"| {g['method']} | {g['representation']} | {g['model']} | {g['prompt']} | "
                     f"{','.join(map(str, g['seeds']))} | {g['iou']:.3f} | {g['prompt_accuracy']:.3f} | "
                     f"{g['render_diversity']:.4f} | {g['feature_diversity']:.3f} |")
    return lines
