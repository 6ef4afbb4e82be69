"""Byte-identical files: the same content digest (the sha256 the feature cache already keys images by).

Free to find: no pixel is read. A copy of a test image in train is a ``leak`` (the test score counts
it twice); copies within one split, or between train and another non-test split, are
``exact_duplicate``. Each group of n copies gives n - 1 pairs, all against the group's first file
(train first), so ``--write-exclusions`` can keep one and leave the rest out.
"""

from __future__ import annotations

from collections import defaultdict

from tlkit.audit.findings import AuditInputs, Finding

_SPLIT_ORDER = {"train": 0, "test": 2}  # other splits (val, ...) sit between


def find_exact_duplicates(inputs: AuditInputs) -> list[Finding]:
    """One finding per copy: a ``leak`` for a train/test pair, an ``exact_duplicate`` otherwise."""
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for split, data in inputs.splits.items():
        for i, digest in enumerate(data.digests):
            if digest:
                groups[digest].append((split, i))
    findings: list[Finding] = []
    for members in groups.values():
        if len(members) > 1:
            findings.extend(_pairs(inputs, sorted(members, key=lambda m: (_SPLIT_ORDER.get(m[0], 1), m[0], inputs.splits[m[0]].paths[m[1]]))))
    return findings


def _pairs(inputs: AuditInputs, members: list[tuple[str, int]]) -> list[Finding]:
    first_split, first = members[0]
    first_data = inputs.splits[first_split]
    first_label = inputs.classes[int(first_data.y[first])]
    found = []
    for split, i in members[1:]:
        label = inputs.classes[int(inputs.splits[split].y[i])]
        leak = split == "test" and first_split != "test"
        labels = f"labelled {first_label} and {label}" if label != first_label else f"both labelled {label}"
        found.append(
            Finding(
                kind="leak" if leak else "exact_duplicate",
                paths=(first_data.paths[first], inputs.splits[split].paths[i]),
                splits=(first_split, split),
                score=1.0,
                given_label=label,
                suggested_label=first_label if label != first_label else None,
                detail=f"byte-identical files, {labels}",
            )
        )
    return found
