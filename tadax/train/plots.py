"""PNG figures: training curves and confusion matrices (matplotlib, no display), written
to local or gs:// paths."""

import io
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

_PANELS = (("loss", ("train/loss",)), ("accuracy", ("train/accuracy", "val/top1")),
           ("learning rate", ("train/lr",)), ("clips/s per device", ("train/clips_per_sec_per_device",)))


def _save(fig, path: str) -> None:
    """Renders `fig` as a PNG into `path` and closes it."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    epath.Path(path).write_bytes(png.getvalue())


def training_curves(history: List[Dict[str, float]], path: str, title: str = "") -> None:
    """Loss, accuracy (train batch, validation), lr and throughput against the step."""
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 3.4))
    for ax, (name, keys) in zip(axes, _PANELS):
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if key.startswith("val/") else None,
                        markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def confusion_matrix(matrix: np.ndarray, path: str,
                     class_names: Optional[Sequence[str]] = None, title: str = "") -> None:
    """A `(C, C)` count matrix (rows: true class, columns: predicted), row-normalised.

    Class names label the axes up to 60 classes; beyond that only indices.
    """
    counts = matrix.astype(np.float64)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    c = matrix.shape[0]
    size = min(4 + 0.12 * c, 28)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if class_names is not None and c <= 60:
        ax.set_xticks(range(c), class_names, rotation=90, fontsize=6)
        ax.set_yticks(range(c), class_names, fontsize=6)
    if title:
        ax.set_title(title)
    _save(fig, path)
