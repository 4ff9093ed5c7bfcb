"""Training curves and confusion matrices as PNG files (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from tlkit.fileio import atomic_write_with


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Plot every numeric per-epoch series in ``rows`` (losses on the left, other metrics on the right)."""
    plt = _pyplot()
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    keys = sorted({k for r in rows for k, v in r.items() if k != "epoch" and isinstance(v, int | float)})
    loss_keys = [k for k in keys if "loss" in k]
    other_keys = [k for k in keys if k not in loss_keys and k not in ("lr", "seconds", "items_per_s", "phase")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, group, title in ((axes[0], loss_keys, "loss"), (axes[1], other_keys, "metrics")):
        for k in group:
            ax.plot(epochs, [r.get(k, float("nan")) for r in rows], marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if group:
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike[str]) -> None:
    """A confusion-matrix heat map with counts (rows: true class, columns: predicted)."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix)
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        hi = m.max() if m.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > hi / 2 else "black")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
