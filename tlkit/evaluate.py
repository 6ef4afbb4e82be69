"""Metrics from predictions: accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix.

Plain tensor arithmetic on a confusion matrix, so every number in ``metrics.json`` can be checked
against the matrix saved next to it. A class with no test images has recall ``None`` (undefined),
and balanced accuracy averages over the classes that do appear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[i, j]`` = number of images of true class i predicted as class j."""
    index = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Everything a person needs to judge a classifier on one split, as JSON-able data."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    total = int(cm.sum())
    correct = int(cm.diag().sum())
    per_class: dict[str, dict[str, Any]] = {}
    recalls: list[float] = []
    for i, name in enumerate(classes):
        tp = int(cm[i, i])
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, support)
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if recall is not None:
            recalls.append(recall)
    return {
        "accuracy": _ratio(correct, total),
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else None,
        "correct": correct,
        "count": total,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
