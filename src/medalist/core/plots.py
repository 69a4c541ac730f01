"""Ground floor: the pictures more than one stage draws, written atomically as PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medalist.core.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen on CI or a rented box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, dpi: int = 90) -> Path:
    plt = pyplot()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(out)


def plot_confusion(y_true, y_pred, labels: list[str], title: str, out: Path) -> Path:
    """Two panels, counts and row-normalised (recall on the diagonal)."""
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    K = len(labels)
    cm = confusion_matrix(y_true, y_pred, labels=list(range(K)))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.7 * K + 3)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, m, fmt, name in ((axes[0], cm, "d", "counts"), (axes[1], norm, ".2f", "row-normalised")):
        ax.imshow(m, cmap="Blues", vmin=0)
        for i in range(K):
            for j in range(K):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > m.max() / 2 else "black")
        ax.set_xticks(range(K), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(K), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
    fig.tight_layout()
    return save_figure(fig, out)
