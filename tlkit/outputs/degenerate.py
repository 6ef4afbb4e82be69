"""Say when a run's number means nothing: a head that predicted one class for every test image, or
features that do not vary at all.

Both happen silently otherwise. A random-weight backbone gives features ~1e-9 in scale; a head that
cannot learn on them predicts its majority class for every image, and its accuracy (the majority
share: 45.8% on ants/bees) looks like a weak result instead of no result. These checks go into
``metrics.json`` (``degenerate`` and ``warnings``), the run summary, ``report.html`` and the table of
``tlkit compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tlkit.fitting import varying


@dataclass(frozen=True)
class Degeneracy:
    """What the checks found: the one class predicted for everything (or ``None``) and how many features vary."""

    single_class: str | None
    varying_features: int
    feature_dim: int

    @property
    def constant_features(self) -> bool:
        return self.feature_dim > 0 and self.varying_features == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "single_class_prediction": self.single_class,
            "constant_features": self.constant_features,
            "varying_features": self.varying_features,
            "feature_dim": self.feature_dim,
        }

    def warnings(self) -> list[str]:
        """One line per problem, saying what it means and what to try."""
        lines = []
        if self.single_class is not None:
            lines.append(
                f"the head predicted one class ('{self.single_class}') for every test image: its accuracy is the share of that class, "
                "not a result (try head.name=knn, or a pretrained backbone)"
            )
        if self.constant_features:
            lines.append(f"the training features do not vary (0 of {self.feature_dim} features vary): the backbone gives every image the same vector")
        return lines


def check(train_x: torch.Tensor, test_true: torch.Tensor, test_predicted: torch.Tensor, classes: Sequence[str]) -> Degeneracy:
    """The checks on a run's training features and its test predictions.

    A single predicted class counts only when the test split holds more than one class (predicting
    the only class there is is right, not collapsed).
    """
    single = None
    if len(test_predicted) and len(torch.unique(test_true)) > 1 and len(torch.unique(test_predicted)) == 1:
        single = classes[int(test_predicted[0])]
    dim = int(train_x.shape[1]) if train_x.ndim == 2 else 0
    count = 0
    if dim and len(train_x) > 1:
        x = train_x.double()
        count = int(varying(x.mean(0), x.std(0, unbiased=False)).sum())
    return Degeneracy(single_class=single, varying_features=count, feature_dim=dim)
