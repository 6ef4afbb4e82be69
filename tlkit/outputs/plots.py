"""PNG plots a person learns from: the confusion matrix, the training curve, logreg's L2 sweep, and
the misclassified test images themselves.

Every figure carries the run's title line (backbone, head, test accuracy: :func:`run_title`), so a
PNG that travels alone still says what it shows. Figures are drawn with matplotlib's object API on
an Agg canvas, so plotting needs no display and never touches pyplot's global state (safe in
tests, servers and threads).

Every text a user chose (class names, file names, the backbone in the title) is drawn as written:
:func:`plain` escapes its ``$`` so matplotlib never reads it as mathtext (a class folder named
``$\frac{$`` would otherwise crash the plot stage after all the work), and figures are drawn with
``text.usetex`` off whatever the user's matplotlibrc says (:func:`plain_figures`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tlkit.outputs.plot_cache import run_title  # noqa: F401 - where it was, for callers of plots.run_title

if TYPE_CHECKING:
    from tlkit.outputs.predictions import PredictionRow

_F = TypeVar("_F", bound=Callable[..., Any])

THUMBNAIL = 160  # pixels of the longer side of an errors.png thumbnail
MAX_ERRORS_SHOWN = 48


def plain(text: object) -> str:
    """``text`` as matplotlib must be given it to draw it as written: every ``$`` escaped (no mathtext)."""
    return str(text).replace("$", r"\$")


def plain_figures(draw: _F) -> _F:
    """Run ``draw`` with ``text.usetex`` off, so the escaped text of :func:`plain` is never handed to TeX."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context({"text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:  # name the file: matplotlib's own error (a full disk) does not
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    return path


@plain_figures
def confusion_matrix_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Counts in every cell, rows = true class, columns = predicted class; shading by row share."""
    n = len(classes)
    title, classes = plain(title), [plain(name) for name in classes]
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
    ax.set_title(f"{title}\ntest confusion matrix" if title else "test confusion matrix")
    return _save(figure, path)


CURVES = (  # history key, legend label, line style
    ("train_accuracy", "train", "-"),
    ("val_accuracy", "validation (held out from train; chooses the kept epoch)", "-"),
    ("test_accuracy", "test (shown only, never used to choose)", ":"),
)


def _accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    """The accuracy axis zoomed to the data, with a margin, never past [0, 1]."""
    low, high = min(values), max(values)
    margin = max(0.02, 0.1 * (high - low))
    return max(0.0, low - margin), min(1.0, high + margin)


@plain_figures
def training_curve_png(
    history: Sequence[Mapping[str, float]], path: Path, title: str = "", kept_epoch: int | None = None, x_label: str = "epoch"
) -> Path | None:
    """Loss (left) and accuracies (right) against the epoch, from 0; ``None`` when there is no curve.

    ``kept_epoch`` (an early-stopped head's choice) is marked on both panels.
    """
    points = [p for p in history if "epoch" in p and "loss" in p]
    if len(points) < 2:
        return None
    epochs = [p["epoch"] for p in points]
    figure = Figure(figsize=(11, 4.2))
    loss_ax, acc_ax = figure.subplots(1, 2)
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if all(key in p for p in points):
            loss_ax.plot(epochs, [p[key] for p in points], label=label)
    loss_ax.set_ylabel("cross-entropy loss")
    accuracies: list[float] = []
    for key, label, style in CURVES:
        if all(key in p for p in points):
            values = [p[key] for p in points]
            accuracies.extend(values)
            acc_ax.plot(epochs, values, style, label=label, clip_on=False)  # a curve at 1.0 stays whole
    acc_ax.set_ylabel("accuracy")
    if accuracies:
        acc_ax.set_ylim(*_accuracy_limits(accuracies))
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel(x_label)
        ax.set_xlim(0, max(epochs))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if kept_epoch is not None:
            ax.axvline(kept_epoch, color="black", linestyle="--", linewidth=1, label=f"kept: {x_label} {kept_epoch}")
        ax.legend(fontsize=8)
    figure.suptitle(f"{plain(title)}\ntraining curve" if title else "training curve")
    return _save(figure, path)


@plain_figures
def l2_sweep_png(sweep: Sequence[Mapping[str, float]], chosen: float, path: Path, title: str = "") -> Path | None:
    """Held-out accuracy (and log-loss) against the L2 strength, the chosen value marked; ``None`` without a sweep."""
    points = sorted((p for p in sweep if "l2" in p and "val_accuracy" in p), key=lambda p: p["l2"])
    if len(points) < 2:
        return None
    l2 = [p["l2"] for p in points]
    figure = Figure(figsize=(7, 4.2))
    ax = figure.add_subplot()
    ax.semilogx(l2, [p["val_accuracy"] for p in points], "o-", label="held-out accuracy", clip_on=False)
    ax.set_xlabel("L2 strength (log scale)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(*_accuracy_limits([p["val_accuracy"] for p in points]))
    ax.grid(alpha=0.3, which="both")
    ax.axvline(chosen, color="black", linestyle="--", linewidth=1, label=f"chosen: {chosen:.3g}")
    lines, labels = ax.get_legend_handles_labels()
    if all("val_log_loss" in p for p in points):
        loss_ax = ax.twinx()
        loss_ax.semilogx(l2, [p["val_log_loss"] for p in points], "s:", color="tab:orange", label="held-out log-loss (tie-break)")
        loss_ax.set_ylabel("held-out log-loss")
        more_lines, more_labels = loss_ax.get_legend_handles_labels()
        lines, labels = lines + more_lines, labels + more_labels
    ax.legend(lines, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax.set_title(f"{plain(title)}\nlogreg L2 sweep on a part held out from train" if title else "logreg L2 sweep on a part held out from train")
    return _save(figure, path)


def _thumbnail(path: str) -> Any:
    """The image shrunk to :data:`THUMBNAIL` pixels, or None when it cannot be opened."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            return img
    except (OSError, ValueError):
        return None


@plain_figures
def errors_png(rows: Sequence[PredictionRow], path: Path, title: str = "", limit: int = MAX_ERRORS_SHOWN) -> Path:
    """A grid of the misclassified test images, worst (most confident) first, each captioned
    with its file name, true class, predicted class and confidence. Written even when there are no
    mistakes (it then says so), so every run has one."""
    shown = sorted(rows, key=lambda row: -row.confidence)[:limit]
    columns = min(6, max(1, len(shown)))
    grid_rows = max(1, math.ceil(len(shown) / columns))
    figure = Figure(figsize=(2.3 * columns + 0.4, 2.75 * grid_rows + 0.6))
    more = f" (the {limit} most confident of {len(rows)} shown; all in errors.csv)" if len(rows) > limit else ""
    heading = f"misclassified test images, most confident first{more}" if rows else "no misclassified test images"
    figure.suptitle(f"{plain(title)}\n{heading}" if title else heading, fontsize=11)
    if not shown:
        return _save(figure, path)
    for index, row in enumerate(shown):
        ax = figure.add_subplot(grid_rows, columns, index + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        image = _thumbnail(row.path)
        if image is None:
            ax.text(0.5, 0.5, "cannot open", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(image)
        name = Path(row.path).name
        name = name if len(name) <= 24 else name[:10] + "..." + name[-11:]
        caption = f"{name}\ntrue: {row.true_class}\npredicted: {row.predicted_class}"
        ax.set_title(f"{plain(caption)} ({100 * row.confidence:.0f}%)", fontsize=8)
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:red")
            spine.set_linewidth(2)
    return _save(figure, path)
