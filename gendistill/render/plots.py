"""Training curves as a PNG: one panel per logged quantity, losses on a log scale."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Every numeric key of the history rows as (steps, values), skipping non-finite values."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in history:
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            steps, values = out.setdefault(key, ([], []))
            steps.append(row["step"])
            values.append(float(value))
    return out


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write the curves of ``history`` (trainer rows) to ``path``; None if there is nothing to plot."""
    data = series(history)
    if not data:
        return None
    keys = sorted(data, key=lambda k: (k.startswith("eval/"), k))
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = data[key]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if not key.startswith("eval/") and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
