"""Metrics from predictions (the rows themselves: :mod:`tlkit.outputs.predictions`): accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix.

Plain tensor arithmetic on a confusion matrix, so every number in ``metrics.json`` can be checked
against the matrix saved next to it. A class with no test images has recall ``None`` (undefined),
and balanced accuracy averages over the classes that do appear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[i, j]`` = number of images of true class i predicted as class j."""
    index = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class ClassMetrics:
    """One class on one split; ``None`` where a ratio is undefined (no predictions, no images)."""

    precision: float | None
    recall: float | None
    f1: float | None
    support: int


@dataclass(frozen=True)
class SplitMetrics:
    """A classifier judged on one split, every number checkable against ``confusion_matrix``."""

    accuracy: float | None
    balanced_accuracy: float | None
    correct: int
    count: int
    per_class: Mapping[str, ClassMetrics]
    confusion_matrix: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunMetrics:
    """What ``metrics.json`` holds: the test and train results of a run and how it got them."""

    test: SplitMetrics
    train: SplitMetrics
    classes: list[str]
    counts: dict[str, int]
    feature_dim: int
    skipped_images: int = 0
    test_errors: int = 0
    features: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    head_choices: dict[str, Any] = field(default_factory=dict)  # what the head chose (TrainedHead.choices)
    head_notes: list[str] = field(default_factory=list)  # the same, in words
    audit: dict[str, Any] | None = None  # the data audit's summary (tlkit.audit): leaks, accuracy without them, counts

    @property
    def test_accuracy(self) -> float | None:
        return self.test.accuracy

    @property
    def train_accuracy(self) -> float | None:
        return self.train.accuracy

    @property
    def test_balanced_accuracy(self) -> float | None:
        return self.test.balanced_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` layout (headline figures first, then the details)."""
        return {
            "test_accuracy": self.test_accuracy,
            "train_accuracy": self.train_accuracy,
            "test_balanced_accuracy": self.test_balanced_accuracy,
            "counts": dict(self.counts),
            "skipped_images": self.skipped_images,
            "features": dict(self.features),
            "classes": list(self.classes),
            "feature_dim": self.feature_dim,
            "test": self.test.to_dict(),
            "history": [dict(point) for point in self.history],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "test_errors": self.test_errors,
            "head_choices": dict(self.head_choices),
            "head_notes": list(self.head_notes),
            **({"audit": dict(self.audit)} if self.audit is not None else {}),
        }


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, classes: Sequence[str]) -> SplitMetrics:
    """Everything a person needs to judge a classifier on one split."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    per_class = {name: _class_metrics(cm, i) for i, name in enumerate(classes)}
    recalls = [m.recall for m in per_class.values() if m.recall is not None]
    correct, total = int(cm.diag().sum()), int(cm.sum())
    return SplitMetrics(
        accuracy=_ratio(correct, total),
        balanced_accuracy=sum(recalls) / len(recalls) if recalls else None,
        correct=correct,
        count=total,
        per_class=per_class,
        confusion_matrix=cm.tolist(),
    )


def _class_metrics(cm: torch.Tensor, i: int) -> ClassMetrics:
    tp, support, predicted = int(cm[i, i]), int(cm[i].sum()), int(cm[:, i].sum())
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ClassMetrics(precision=precision, recall=recall, f1=f1, support=support)
