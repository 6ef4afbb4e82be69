"""Where each image sits in feature space: its k nearest neighbours (blocked) and the class centres.

Features are standardised with the train split's statistics (relative epsilon, so any scale works) and
L2-normalised; similarity is the cosine. The k-nearest-neighbour search walks the images in blocks
of rows against all images, keeping only each row's top k, so memory is ``block x N`` floats, never
``N x N`` (100k images of any dimension stay within a few hundred MB).

- ``outlier``: the mean cosine distance to the k nearest neighbours (low local density) far above the
  typical one: more than ``outlier_mad`` robust standard deviations (1.4826 x MAD) above the median.
- ``nearer_other_class``: a labelled image whose cosine to another class's train centre beats the
  one to its own class's centre.
"""

from __future__ import annotations

import numpy as np
import torch

from tlkit.audit.findings import AuditInputs, Finding
from tlkit.audit.probabilities import feature_scale

BLOCK_FLOATS = 8_000_000  # block rows x N similarities held at once (32 MB of float32)


def embed(inputs: AuditInputs) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """All images' unit-length standardised features (float32) and (split, index) of each row."""
    names = list(inputs.splits)
    train = inputs.splits.get("train")
    reference = train.x if train is not None and len(train.x) else np.concatenate([inputs.splits[s].x for s in names])
    mean = reference.mean(0, dtype=np.float64).astype(np.float32)
    scale = feature_scale(reference)
    rows = [((inputs.splits[s].x - mean) / scale).astype(np.float32) for s in names]
    x = np.concatenate(rows) if rows else np.zeros((0, reference.shape[1]), np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = [(s, i) for s in names for i in range(len(inputs.splits[s].x))]
    return x, index


def knn_distance(x: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each row to its k nearest other rows, in blocks (no N x N matrix)."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(n)
    t = torch.from_numpy(x)
    block = max(1, min(n, BLOCK_FLOATS // max(n, 1)))
    out = np.empty(n)
    for start in range(0, n, block):
        sims = t[start : start + block] @ t.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0  # never one's own neighbour
        out[start : start + block] = (1.0 - sims.topk(k, dim=1).values).mean(1).double().numpy()
    return out


def find_outliers(inputs: AuditInputs) -> list[Finding]:
    """Images in a sparse part of feature space: far above the median k-NN distance."""
    x, index = embed(inputs)
    if len(x) < 3:
        return []
    distance = knn_distance(x, int(inputs.options.get("neighbours", 10)))
    median = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - median))) or 1e-12
    z = (distance - median) / spread
    limit = float(inputs.options.get("outlier_mad", 5.0))
    findings = []
    for row in np.flatnonzero(z > limit):
        split, i = index[row]
        data = inputs.splits[split]
        findings.append(
            Finding(
                kind="outlier", paths=(data.paths[i],), splits=(split,), score=float(z[row]),
                given_label=inputs.classes[int(data.y[i])],
                detail=f"mean cosine distance to its {min(int(inputs.options.get('neighbours', 10)), len(x) - 1)} nearest images {distance[row]:.3f} (median {median:.3f})",
            )
        )
    return findings


def find_nearer_other_class(inputs: AuditInputs) -> list[Finding]:
    """Images whose features are nearer another class's train centre than their own class's."""
    x, index = embed(inputs)
    labels = np.array([int(inputs.splits[s].y[i]) for s, i in index], dtype=np.int64)
    in_train = np.array([s == "train" for s, _ in index], dtype=bool)
    k = len(inputs.classes)
    present = [c for c in range(k) if (in_train & (labels == c)).any()]
    if len(present) < 2:
        return []
    centres = np.zeros((k, x.shape[1]), np.float32)
    for c in present:
        centre = x[in_train & (labels == c)].mean(0)
        centres[c] = centre / max(float(np.linalg.norm(centre)), 1e-12)
    sims = x @ centres.T
    sims[:, [c for c in range(k) if c not in present]] = -np.inf
    own = sims[np.arange(len(x)), labels]
    masked = sims.copy()
    masked[np.arange(len(x)), labels] = -np.inf
    other = masked.argmax(1)
    margin = masked[np.arange(len(x)), other] - own
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
