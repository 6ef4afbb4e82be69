"""The audit's headline figures and the few lines a person reads at the end of a run.

The test accuracy without the leaked test images is computed from the run's own test predictions,
leaving out every test image that has a copy in train (any ``leak`` finding, whichever finder made
it: byte copies or near-duplicates), so the two figures sit side by side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from tlkit.audit.findings import KINDS, AuditInputs, Finding

_NAMES = {
    "exact_duplicate": ("exact duplicate", "exact duplicates"),
    "near_duplicate": ("near-duplicate pair", "near-duplicate pairs"),
    "outlier": ("outlier", "outliers"),
    "nearer_other_class": ("image nearer another class's centre", "images nearer another class's centre"),
    "class_size": ("class-size warning", "class-size warnings"),
    "image_size": ("odd image size", "odd image sizes"),
}


def leaked_test_paths(findings: Sequence[Finding]) -> set[str]:
    """Test images with a copy in train: the test side of every ``leak`` finding."""
    return {path for f in findings if f.kind == "leak" for path, split in zip(f.paths, f.splits) if split == "test"}


def summarise(inputs: AuditInputs, findings: Sequence[Finding]) -> dict[str, Any]:
    """``audit.json``'s ``summary`` and ``metrics.json``'s ``audit``: counts, and the accuracy with and without leaked images."""
    leaked = leaked_test_paths(findings)
    counts = Counter(f.kind for f in findings)
    summary: dict[str, Any] = {
        "images": {split: len(data.y) for split, data in inputs.splits.items()},
        "leaked_test_images": len(leaked),
        "label_issues": counts.get("label_issue", 0),
        "counts": {kind: counts.get(kind, 0) for kind in KINDS},
    }
    test = inputs.splits.get("test")
    if test is not None and inputs.test_predictions is not None and len(inputs.test_predictions) == len(test.y):
        correct = np.asarray(inputs.test_predictions) == test.y
        keep = np.array([path not in leaked for path in test.paths], dtype=bool)
        summary["test_accuracy"] = float(correct.mean()) if len(correct) else None
        summary["test_accuracy_without_leaked"] = float(correct[keep].mean()) if keep.any() else None
    return summary


def summary_lines(summary: dict[str, Any], where: str = "audit.csv") -> list[str]:
    """A few lines: the leak and its effect on accuracy, the label issues, the rest in one line."""
    lines = []
    leaked = summary.get("leaked_test_images", 0)
    if leaked:
        head = f"{leaked} test image{'s have' if leaked != 1 else ' has'} a copy in train"
        with_, without = summary.get("test_accuracy"), summary.get("test_accuracy_without_leaked")
        if with_ is not None and without is not None:
            head += f": accuracy without {'them' if leaked != 1 else 'it'} {100 * without:.1f}% ({100 * with_:.1f}% with)"
        lines.append(head)
    issues = summary.get("label_issues", 0)
    if issues:
        lines.append(f"{issues} training label{'s look' if issues != 1 else ' looks'} wrong: see {where}")
    rest = [f"{n} {_NAMES[k][n != 1]}" for k, n in summary.get("counts", {}).items() if n and k in _NAMES]
    if rest:
        lines.append(f"also {', '.join(rest)} ({where})")
    if not lines:
        lines.append(f"nothing found in {sum(summary.get('images', {}).values())} images")
    return lines
