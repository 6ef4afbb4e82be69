"""Label issues by confident learning (Northcutt, Jiang and Chuang, JAIR 2021), written out in numpy.

From out-of-sample probabilities ``p`` and given labels ``s``:

1. per-class thresholds ``t_j`` = the mean probability of class j among images labelled j (its self-confidence);
2. the confident joint ``C[i, j]``: images labelled i whose probability of j reaches ``t_j``
   (the largest such j when several do), calibrated so each row sums to the class's count;
3. prune by noise rate: for every i != j, the ``round(C[i, j])`` images labelled i with the largest
   margin ``p[j] - p[i]`` are label issues; an image whose most probable class is its given one is kept.

Ranked by self-confidence (``1 - p[s]``: the less the model believes the given label, the higher),
with the most probable class as the suggested one. cleanlab's ``find_label_issues`` does the same
(``filter_by="prune_by_noise_rate"``); ``benchmarks/audit.py`` runs both side by side on one set of
probabilities. Written here rather than imported so the audit needs no extra package.
"""

from __future__ import annotations

import numpy as np

from tlkit.audit.findings import AuditInputs, Finding
from tlkit.audit.probabilities import DEFAULT_FOLDS, out_of_sample_probabilities


def confident_joint(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The calibrated confident joint ``C[given, true]`` (rows sum to each given class's count)."""
    k = probabilities.shape[1]
    counts = np.bincount(labels, minlength=k)
    thresholds = np.array([probabilities[labels == j, j].mean() if counts[j] else 1.0 for j in range(k)])
    above = probabilities >= thresholds - 1e-12
    masked = np.where(above, probabilities, -np.inf)
    confident = above.any(1)
    true = masked.argmax(1)
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[confident], true[confident]), 1.0)
    rows = joint.sum(1, keepdims=True)
    return np.divide(joint * counts[:, None], rows, out=np.zeros_like(joint), where=rows > 0)


def label_issue_mask(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True for each image confident learning calls mislabelled (prune by noise rate)."""
    n, k = probabilities.shape
    joint = confident_joint(probabilities, labels)
    issues = np.zeros(n, dtype=bool)
    for given in range(k):
        members = np.flatnonzero(labels == given)
        for true in range(k):
            count = int(round(joint[given, true]))
            if true == given or count <= 0 or not len(members):
                continue
            margin = probabilities[members, true] - probabilities[members, given]
            order = np.lexsort((members, -margin))  # ties broken by index: deterministic
            issues[members[order[:count]]] = True
    issues &= probabilities.argmax(1) != labels
    return issues


def find_label_issues(inputs: AuditInputs) -> list[Finding]:
    """Training images whose given label is likely wrong, with the class the features suggest."""
    train = inputs.splits.get("train")
    if train is None or len(train.y) < 4 or not inputs.options.get("label_issues", 1):
        return []
    labels = train.y.astype(np.int64)
    l2 = float(inputs.options.get("l2", 0.0))  # 0: chosen by out-of-sample log-loss
    folds = int(inputs.options.get("folds", DEFAULT_FOLDS))
    probabilities, _ = out_of_sample_probabilities(train.x, labels, len(inputs.classes), folds=folds, seed=inputs.seed, l2=l2 or None)
    mask = label_issue_mask(probabilities, labels)
    findings = []
    for i in np.flatnonzero(mask):
        given, suggested = int(labels[i]), int(probabilities[i].argmax())
        findings.append(
            Finding(
                kind="label_issue",
                paths=(train.paths[i],),
                splits=("train",),
                score=float(1.0 - probabilities[i, given]),
                given_label=inputs.classes[given],
                suggested_label=inputs.classes[suggested],
                detail=f"p({inputs.classes[given]}) = {probabilities[i, given]:.2f}, p({inputs.classes[suggested]}) = {probabilities[i, suggested]:.2f} out of sample",
            )
        )
    return findings
