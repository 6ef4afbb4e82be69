"""The audit as a stage of a run: build :class:`~tlkit.audit.findings.AuditInputs` from what the run has, audit, keep the summary.

A run audits the features it just extracted and its own test predictions (``tlkit run``, and the
end of every ``tlkit compare`` pair); ``tlkit audit RECIPE`` extracts through the cache first and
has no predictions, so it reports leaks without an accuracy; ``tlkit audit RUN`` reads the run's
``split.csv`` features from the cache (:func:`tlkit.saved.feature_export.split_arrays`) and its
``predictions.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tlkit.audit.exclusions import data_root, relative
from tlkit.audit.findings import AuditInputs, SplitData
from tlkit.audit.report import AuditReport
from tlkit.contract.observer import Observer
from tlkit.contract.specs import Sample
from tlkit.extract.cache import hash_files
from tlkit.outputs.predictions import PredictionRow
from tlkit.run.stages import Prepared, SplitFeatures


def split_data(x: np.ndarray, y: np.ndarray, samples: Sequence[Sample], root: Path) -> SplitData:
    """One split for the audit: paths relative to ``root``, files to open, content digests (from the cache's hash index)."""
    files = tuple(None if s.member is not None else Path(s.path) for s in samples)
    on_disk = [f for f in files if f is not None]
    hashed = iter(hash_files(on_disk) if on_disk else [])
    digests = tuple(s.member.sha256 if s.member is not None else (next(hashed) or "") for s in samples)
    return SplitData(
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=np.asarray(y, dtype=np.int64),
        paths=tuple(relative(s.path, root) for s in samples),
        files=files,
        digests=digests,
    )


def predicted_labels(rows: Sequence[PredictionRow], classes: Sequence[str]) -> np.ndarray:
    """The predicted class index of each test row (``predictions.csv`` order)."""
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index.get(row.predicted_class, -1) for row in rows], dtype=np.int64)


def run_inputs(prepared: Prepared, features: SplitFeatures, test_rows: Sequence[PredictionRow] | None = None) -> AuditInputs:
    """The audit's inputs for a run: its features, samples and (when it has them) test predictions."""
    root = prepared.root or data_root(prepared.recipe.dataset.options, prepared.dataset)
    splits = {
        split: split_data(features.features[split].x.numpy(), features.features[split].y.numpy(), features.samples[split], root)
        for split in features.features
    }
    return AuditInputs(
        classes=tuple(prepared.classes),
        splits=splits,
        seed=prepared.recipe.seed,
        root=root,
        test_predictions=predicted_labels(test_rows, prepared.classes) if test_rows is not None else None,
        options=prepared.recipe.audit.options(),
    )


def run_audit(inputs: AuditInputs, observer: Observer | None = None, *, memo: Path | None = None) -> AuditReport:
    """Run the audit (every finder in :data:`tlkit.audit.runner.FINDERS`), saying so to ``observer``.

    With ``memo`` (the cache folder; ``None`` with ``extract.cache: false``) the audit of the very same
    inputs is read back instead of recomputed (:mod:`tlkit.audit.memo`): a warm rerun pays for it once.
    """
    from tlkit.audit import memo as audit_memo

    (observer or Observer()).stage("auditing the data set")
    key = audit_memo.memo_key(inputs) if memo is not None else ""
    remembered = audit_memo.recall(memo, key, inputs) if memo is not None else None
    if remembered is not None:
        return remembered
    from tlkit.audit.runner import audit  # the finders are imported only when they run

    report = audit(inputs)
    if memo is not None:
        audit_memo.remember(memo, key, report)
    return report


def with_audit(summary: Mapping[str, object] | None) -> dict[str, object] | None:
    """The part of the audit summary that goes into ``metrics.json`` (``audit``), pointing at the full file."""
    return None if summary is None else {**summary, "file": "audit.json"}
