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


PREDICTION_COLUMNS = ("path", "true_class", "predicted_class", "confidence", "true_class_probability")


def prediction_rows(paths: Sequence[Any], y_true: torch.Tensor, probabilities: torch.Tensor, classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per image: its path, true and predicted class, and the probabilities of both.

    ``confidence`` is the probability of the predicted class; ``true_class_probability`` shows how
    far a mistake was from being right.
    """
    confidence, predicted = probabilities.max(1)
    true_probability = probabilities[torch.arange(len(y_true)), y_true.long()]
    return [
        {
            "path": str(path),
            "true_class": classes[int(t)],
            "predicted_class": classes[int(p)],
            "confidence": round(float(c), 6),
            "true_class_probability": round(float(tp), 6),
        }
        for path, t, p, c, tp in zip(paths, y_true.tolist(), predicted.tolist(), confidence.tolist(), true_probability.tolist())
    ]


def misclassified(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose predicted class is not the true one, most confident mistakes first."""
    wrong = [row for row in rows if row["predicted_class"] != row["true_class"]]
    return sorted(wrong, key=lambda row: -row["confidence"])
