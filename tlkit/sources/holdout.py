"""The one seeded rule that holds images out as test when a data set comes without a test split.

Every loader that splits (``imagefolder``'s ``split:``, the ``csv`` manifest without a split column,
a saved ``hf_datasets`` copy without splits) uses it, so "the same seed, the same split" means the same
thing everywhere. Stratified: each class with n >= 2 images gives ``round(test_fraction * n)`` of them,
at least one and never all; a class with a single image keeps it in train. Stable: an image's rank
within its class is the sha256 of the seed and its *key* (the loader's stable name for it: a path inside
the class folder, a path as the CSV writes it, a content digest), and depends on nothing else, so
adding images later moves few old ones. Public as ``tlkit.holdout_split``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass


def holdout_rank(key: str, seed: int) -> str:
    """An image's rank within its class: the hash of the seed and its key (nothing else)."""
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


@dataclass(frozen=True)
class Holdout:
    """Which positions go to test (a set of indices into the listing) and which classes had a single image."""

    test: frozenset[int]
    single_image_classes: tuple[int, ...]


def holdout_split(keys: Sequence[str], labels: Sequence[int], test_fraction: float, seed: int) -> Holdout:
    """The positions of ``keys`` (one per image, with its class in ``labels``) held out as test.

    ``0 < test_fraction < 1``; keys must be distinct within a class (a loader's stable names are).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie between 0 and 1 (got {test_fraction})")
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    test: set[int] = set()
    singles: list[int] = []
    for label in sorted(members):
        indices = members[label]
        if len(indices) == 1:
            singles.append(label)
            continue
        n_test = min(len(indices) - 1, max(1, int(test_fraction * len(indices) + 0.5)))
        ranked = sorted(indices, key=lambda i: holdout_rank(keys[i], seed))
        test.update(ranked[:n_test])
    return Holdout(frozenset(test), tuple(singles))
