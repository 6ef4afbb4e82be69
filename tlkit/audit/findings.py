"""The shared vocabulary of the audit: what goes in (:class:`AuditInputs`), what comes out (:class:`Finding`).

Every finder is a plain function ``find_x(inputs) -> list[Finding]``; the audit runs them, ranks what
they found and writes ``audit.json`` / ``audit.csv`` in the run directory. The report (``report.html#audit``)
and ``tlkit audit`` read only the JSON, so this file is the one contract between them.

``audit.json`` (format 1)::

    {"format": 1, "seed": 0, "classes": ["ants", "bees"],
     "root": "/abs/data",                                              # what the paths are relative to
     "counts": {"label_issue": 7, "near_duplicate": 3, ...},          # findings per kind
     "summary": {"leaked_test_images": 3, "test_accuracy": 0.941,      # keys present when known
                 "test_accuracy_without_leaked": 0.932, ...},
     "findings": [Finding.to_dict(), ...]}                             # ranked: kind order, then score

``audit.csv``: one row per finding with the columns of :data:`CSV_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

FindingKind = Literal[
    "label_issue",  # the given label is likely wrong (confident learning on out-of-sample probabilities)
    "exact_duplicate",  # byte-identical files (same content digest)
    "near_duplicate",  # a resized / re-encoded / cropped / flipped copy within one split
    "leak",  # a copy (exact or near) of a test image in train: the test score counts it twice
    "outlier",  # far from every class in feature space (low density among its k nearest neighbours)
    "nearer_other_class",  # nearer another class's centre than its own
    "class_size",  # a class much smaller than the others in a split, or missing from one
    "image_size",  # tiny or huge image, or an extreme aspect ratio
]

KINDS: tuple[FindingKind, ...] = (
    "leak",
    "label_issue",
    "exact_duplicate",
    "near_duplicate",
    "outlier",
    "nearer_other_class",
    "class_size",
    "image_size",
)

CSV_COLUMNS = ("kind", "path", "other_path", "split", "other_split", "score", "given_label", "suggested_label", "detail")

AUDIT_FORMAT = 1


@dataclass(frozen=True)
class Finding:
    """One thing worth a look: a file (or a pair of files), how sure the audit is, and what it suggests.

    ``paths`` are relative to the data set's root (one path; two for duplicate and leak pairs, the train
    image first for a leak), ``splits`` the split of each. ``score`` ranks findings of one kind (higher:
    more likely a real problem); it is not comparable across kinds.
    """

    kind: FindingKind
    paths: tuple[str, ...]
    splits: tuple[str, ...]
    score: float
    given_label: str | None = None
    suggested_label: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "paths": list(self.paths),
            "splits": list(self.splits),
            "score": float(self.score),
            "given_label": self.given_label,
            "suggested_label": self.suggested_label,
            "detail": self.detail,
        }

    def csv_row(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "path": self.paths[0],
            "other_path": self.paths[1] if len(self.paths) > 1 else "",
            "split": self.splits[0],
            "other_split": self.splits[1] if len(self.splits) > 1 else "",
            "score": f"{self.score:.6g}",
            "given_label": self.given_label or "",
            "suggested_label": self.suggested_label or "",
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SplitData:
    """One split as the audit sees it: features (N, D) float32, integer labels, and where each image came from.

    ``paths`` are relative to ``AuditInputs.root`` (for display and exclusions), ``files`` the absolute
    paths to open when pixels are needed (``None`` for a shard member, which has no file), ``digests`` the
    content digests the feature cache keys images by (byte duplicates share one).
    """

    x: np.ndarray
    y: np.ndarray
    paths: tuple[str, ...]
    files: tuple[Path | None, ...]
    digests: tuple[str, ...]


@dataclass(frozen=True)
class AuditInputs:
    """Everything a finder may use: the classes, each split's data, the seed, and limits that keep it bounded."""

    classes: tuple[str, ...]
    splits: dict[str, SplitData]
    seed: int = 0
    root: Path | None = None
    test_predictions: np.ndarray | None = None  # the run's predicted class per test image, when a run is audited
    options: dict[str, float] = field(default_factory=dict)  # thresholds from the recipe's ``audit:`` section
