"""One image's prediction as a typed row: :class:`PredictionRow`.

The evaluation stage makes one per test image (:func:`prediction_rows`); they are written to
``predictions.csv`` and ``errors.csv`` (:data:`PREDICTION_COLUMNS`), shown in ``report.html`` and
``errors.png``, and handed in memory to ``tlkit compare``, which never reads a CSV back. ``tlkit
predict`` makes the same rows for unlabelled images (:func:`top_rows`; no true class, the ``k`` most
probable classes in ``top``). Nothing reads a prediction by a string key. Importing this module
does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PREDICTION_COLUMNS = ("path", "true_class", "predicted_class", "confidence", "true_class_probability")
DIGITS = 6  # probabilities in predictions.csv are rounded to this many decimals


@dataclass(frozen=True)
class ClassProbability:
    """One class and its probability (an entry of ``tlkit predict --top-k``)."""

    name: str
    probability: float


@dataclass(frozen=True)
class PredictionRow:
    """An image's predicted class and its probability, and, where the truth is known, the true class and its probability.

    ``confidence`` is the probability of the predicted class; ``true_class_probability`` shows how
    far a mistake was from being right. ``split`` is the split of a run's row (``"test"``); ``top``
    holds the most probable classes, best first, when they were asked for.
    """

    path: str
    predicted_class: str
    confidence: float
    true_class: str | None = None
    true_class_probability: float | None = None
    split: str | None = None
    top: tuple[ClassProbability, ...] = ()
    margin: float | None = field(default=None, compare=False)  # probability of the predicted class minus the runner-up's: how unsure a right answer was

    @property
    def correct(self) -> bool:
        """Whether the prediction is the true class (False where the truth is unknown)."""
        return self.true_class is not None and self.predicted_class == self.true_class

    def csv_cells(self) -> tuple[str, str, str, float, float | None]:
        """The row of ``predictions.csv`` / ``errors.csv``, in :data:`PREDICTION_COLUMNS` order."""
        return (self.path, self.true_class or "", self.predicted_class, self.confidence, self.true_class_probability)


def prediction_rows(paths: Sequence[Path | str], y_true: torch.Tensor, probabilities: torch.Tensor, classes: Sequence[str], split: str = "test") -> list[PredictionRow]:
    """One row per labelled image, probabilities rounded to :data:`DIGITS` decimals as ``predictions.csv`` holds them."""
    import torch  # here, not at the top: the report and the CLI import this module without needing torch

    confidence, predicted = probabilities.max(1)
    true_probability = probabilities[torch.arange(len(y_true)), y_true.long()]
    best_two = probabilities.topk(min(2, probabilities.shape[1]), dim=1).values
    margins = (best_two[:, 0] - best_two[:, 1]) if best_two.shape[1] > 1 else best_two[:, 0]
    return [
        PredictionRow(
            path=str(path),
            true_class=classes[int(t)],
            predicted_class=classes[int(p)],
            confidence=round(float(c), DIGITS),
            true_class_probability=round(float(tp), DIGITS),
            split=split,
            margin=round(float(m), DIGITS),
        )
        for path, t, p, c, tp, m in zip(paths, y_true.tolist(), predicted.tolist(), confidence.tolist(), true_probability.tolist(), margins.tolist())
    ]


def top_rows(paths: Sequence[Path | str], top: Sequence[Sequence[tuple[int, float]]], classes: Sequence[str]) -> list[PredictionRow]:
    """Rows for unlabelled images from their most probable ``(class index, probability)`` pairs, best first."""
    rows = []
    for path, pairs in zip(paths, top):
        best = tuple(ClassProbability(classes[index], float(probability)) for index, probability in pairs)
        rows.append(PredictionRow(path=str(path), predicted_class=best[0].name, confidence=best[0].probability, top=best))
    return rows


def unsure(rows: Sequence[PredictionRow], limit: int = 24) -> list[PredictionRow]:
    """The right answers closest to being wrong: correct rows, smallest margin over the runner-up first (fastai's top losses misses these)."""
    right = [row for row in rows if row.correct]
    return sorted(right, key=lambda row: (row.margin if row.margin is not None else row.confidence, row.path))[:limit]


def misclassified(rows: Sequence[PredictionRow]) -> list[PredictionRow]:
    """The rows whose predicted class is not the true one, most confident mistakes first."""
    return sorted((row for row in rows if row.true_class is not None and not row.correct), key=lambda row: -row.confidence)
