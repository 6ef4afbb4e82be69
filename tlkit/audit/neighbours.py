"""Where each image sits in feature space: the class centres and its k nearest neighbours (blocked).

Similarity is the cosine of the features as the backbone gives them (unit length, so any feature
scale works alike). Standardising each dimension first was tried and dropped: it spreads the noise
of a thousand weak dimensions evenly and every image ends up about as far from every other
(benchmarks/README.md). The k-nearest-neighbour search walks the images in blocks of rows against
all images, keeping only each row's top k, so memory is ``block x N`` floats, never ``N x N``.

- ``outlier``: far from every class: the cosine distance to the nearest class centre (of the train
  split) more than ``outlier_mad`` robust standard deviations (1.4826 x MAD) above the median one;
  the mean distance to its k nearest images (its local density) is given beside it. On ants/bees with
  generated noise and pattern images added, the distance to the centres ranks all of them first; the
  k-NN density alone ranks real but unusual photos as high (the added images sit near each other).
- ``nearer_other_class``: a labelled image whose cosine to another class's train centre beats the
  one to its own class's centre.
"""

from __future__ import annotations

import numpy as np
import torch

from tlkit.audit.findings import AuditInputs, Finding

BLOCK_FLOATS = 8_000_000  # block rows x N similarities held at once (32 MB of float32)


def embed(inputs: AuditInputs) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """All images' unit-length features (float32, one copy) and (split, index) of each row."""
    names = list(inputs.splits)
    x = np.concatenate([np.asarray(inputs.splits[s].x, dtype=np.float32) for s in names])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-30))
    index = [(s, i) for s in names for i in range(len(inputs.splits[s].x))]
    return x, index


def knn_distance(x: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine distance of each of ``rows`` (default: all) to its k nearest other rows of ``x``, in blocks (no N x N matrix)."""
    n = len(x)
    queries = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(len(queries))
    t = torch.from_numpy(x)
    block = max(1, min(len(queries), BLOCK_FLOATS // max(n, 1)))
    out = np.empty(len(queries))
    for start in range(0, len(queries), block):
        chunk = torch.from_numpy(queries[start : start + block])
        sims = t[chunk] @ t.T
        sims[torch.arange(len(chunk)), chunk] = -2.0  # never one's own neighbour
        out[start : start + block] = (1.0 - sims.topk(k, dim=1).values).mean(1).double().numpy()
    return out


def centre_similarities(inputs: AuditInputs, x: np.ndarray, index: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(N, classes) cosine of each image to each class's train centre (-inf for a class with no train image), labels, classes present."""
    labels = np.array([int(inputs.splits[s].y[i]) for s, i in index], dtype=np.int64)
    in_train = np.array([s == "train" for s, _ in index], dtype=bool)
    k = len(inputs.classes)
    present = [c for c in range(k) if (in_train & (labels == c)).any()]
    centres = np.zeros((k, x.shape[1]), np.float32)
    for c in present:
        centre = x[in_train & (labels == c)].mean(0)
        centres[c] = centre / max(float(np.linalg.norm(centre)), 1e-30)
    sims = x @ centres.T
    sims[:, [c for c in range(k) if c not in present]] = -np.inf
    return sims, labels, present


def robust_z(values: np.ndarray) -> np.ndarray:
    """How many robust standard deviations (1.4826 x MAD) each value lies above the median."""
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    return (values - median) / (spread or 1e-12)


def find_outliers(inputs: AuditInputs) -> list[Finding]:
    """Images far from every class's centre, with their k-NN density beside."""
    x, index = embed(inputs)
    sims, labels, present = centre_similarities(inputs, x, index)
    if len(x) < 3 or not present:
        return []
    distance = 1.0 - sims.max(1)
    z = robust_z(distance)
    limit = float(inputs.options.get("outlier_mad", 5.0))
    flagged = np.flatnonzero(z > limit)
    k = min(int(inputs.options.get("neighbours", 10)), len(x) - 1)
    density = knn_distance(x, k, flagged)  # only the flagged images: a full k-NN pass over 100k images is minutes
    sample = np.random.default_rng(inputs.seed).choice(len(x), min(len(x), 500), replace=False)
    median = float(np.median(knn_distance(x, k, np.sort(sample))))  # the typical density, from a seeded sample
    findings = []
    for j, row in enumerate(flagged):
        split, i = index[row]
        findings.append(
            Finding(
                kind="outlier", paths=(inputs.splits[split].paths[i],), splits=(split,), score=float(z[row]),
                given_label=inputs.classes[labels[row]], suggested_label=None,
                detail=f"cosine distance to the nearest class centre {distance[row]:.3f} ({z[row]:.1f} robust SD above the median); "
                f"mean distance to its {k} nearest images {density[j]:.3f} (typical {median:.3f})",
            )
        )
    return findings


def find_nearer_other_class(inputs: AuditInputs) -> list[Finding]:
    """Images whose features are nearer another class's train centre than their own class's."""
    x, index = embed(inputs)
    sims, labels, present = centre_similarities(inputs, x, index)
    if len(present) < 2:
        return []
    rows = np.arange(len(x))
    own = sims[rows, labels]
    masked = sims.copy()
    masked[rows, labels] = -np.inf
    other = masked.argmax(1)
    margin = masked[rows, other] - own
    findings = []
    for row in np.flatnonzero((margin > 0) & np.isin(labels, present)):
        split, i = index[row]
        findings.append(
            Finding(
                kind="nearer_other_class", paths=(inputs.splits[split].paths[i],), splits=(split,), score=float(margin[row]),
                given_label=inputs.classes[labels[row]], suggested_label=inputs.classes[other[row]],
                detail=f"cosine to the {inputs.classes[other[row]]} centre {sims[row, other[row]]:.3f}, to its own {own[row]:.3f}",
            )
        )
    return findings
