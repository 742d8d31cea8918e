"""Pictures next to the JSON: latency distributions, the tuning curve, and the compression trade-off (PNG).

matplotlib draws off-screen (Agg); each function writes one PNG and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the off-screen backend


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def latency_plot(samples_ms: Mapping[str, Sequence[float]], path: Path, title: str = "latency per call") -> Path:
    """One violin per engine with its median marked: how latencies spread, not only where the median is."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    names = list(samples_ms)
    axes.violinplot([list(samples_ms[name]) for name in names], showmedians=True, showextrema=True)
    axes.set_xticks(range(1, len(names) + 1), names)
    axes.set_ylabel("ms per call")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def tuning_curve(points: Sequence[Sequence[float]], path: Path, title: str = "tuning") -> Path:
    """Sum of the best kernel times after each measured batch (trials on x): where more trials stop paying."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    trials = [point[0] for point in points]
    best = [point[1] for point in points]
    axes.plot(trials, best, marker="o", drawstyle="steps-post")
    axes.set_xlabel("trials measured")
    axes.set_ylabel("sum of best kernel times (ms)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def tradeoff_plot(rows: Sequence[Mapping], path: Path, title: str = "size, quality and latency") -> Path:
    """One point per variant (fp32, int8, pruned, ...): weight size on x, quality on y, latency as the label."""
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    for index, row in enumerate(rows):
        size_kib = row["size_bytes"] / 1024
        axes.scatter([size_kib], [row["quality"]], s=60)
        latency = f", {row['latency_ms']:.3g} ms" if row.get("latency_ms") is not None else ""
        offset = (6, 6 + 12 * (index % 3))  # neighbours of similar size get labels at different heights
        axes.annotate(f"{row['label']}{latency}", (size_kib, row["quality"]), textcoords="offset points", xytext=offset)
    axes.set_xlabel("weights (KiB)")
    axes.set_ylabel(rows[0].get("metric", "quality") if rows else "quality")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _save(figure, path)
