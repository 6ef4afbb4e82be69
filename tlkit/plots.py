"""PNG plots a person would rather look at than read: the confusion matrix and the training curve.

Figures are drawn with matplotlib's object API on an Agg canvas, so plotting needs no display and
never touches pyplot's global state (safe in tests, servers and threads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def confusion_matrix_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "test confusion matrix") -> Path:
    """Counts in every cell, rows = true class, columns = predicted class; shading by row share."""
    n = len(classes)
    side = min(12.0, 2.0 + 0.6 * n)
    figure = Figure(figsize=(side + 1.5, side))
    ax = figure.add_subplot()
    totals = [max(1, sum(row)) for row in matrix]
    shares = [[count / total for count in row] for row, total in zip(matrix, totals)]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), labels=list(classes), rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(figure, path)


def training_curve_png(history: Sequence[Mapping[str, float]], path: Path) -> Path | None:
    """Loss (left) and accuracies (right) against the epoch; ``None`` when there is no curve to draw."""
    points = [p for p in history if "epoch" in p and "loss" in p]
    if len(points) < 2:
        return None
    epochs = [p["epoch"] for p in points]
    figure = Figure(figsize=(10, 4))
    loss_ax, acc_ax = figure.subplots(1, 2)
    for key in ("loss", "val_loss"):
        if all(key in p for p in points):
            loss_ax.plot(epochs, [p[key] for p in points], label=key.replace("_", " "))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend()
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        if all(key in p for p in points):
            acc_ax.plot(epochs, [p[key] for p in points], label=key.replace("_", " "))
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.legend()
    figure.suptitle("training curve (test accuracy is shown, never used for choices)")
    return _save(figure, path)
