"""The audit of inputs already audited, read back instead of recomputed: a warm rerun should not pay for it twice.

A rerun whose features all come from the cache has the very inputs of the run before it (features,
labels, paths, content digests, test predictions, settings, seed), so its audit would find the very
same things; the near-duplicate finder alone decodes and fingerprints a few hundred images to learn it
again. The memo is keyed by a digest of every one of those inputs and of tlkit's version, so any
change (a relabelled image, an edited file, another threshold, a new release) misses it.

The memo lives in the feature cache's folder and is read as untrusted: bounded in bytes, parsed as
JSON, every field checked for its type and range, the classes checked against the run's. Anything
that fails is recomputed (and the entry replaced), never trusted and never an error.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tlkit import __version__
from tlkit.audit.findings import AUDIT_FORMAT, KINDS, AuditInputs, Finding
from tlkit.audit.report import AuditReport
from tlkit.util.atomic import write_atomic
from tlkit.util.regular_files import read_regular

MEMO_FOLDER = "audit"
MAX_MEMO_BYTES = 256 * 1024 * 1024  # far above any real audit (100k images' findings are a few MB)


def memo_key(inputs: AuditInputs) -> str:
    """A digest of everything the audit's result depends on."""
    digest = hashlib.sha256()
    header = {
        "tlkit": __version__,
        "format": AUDIT_FORMAT,
        "classes": list(inputs.classes),
        "seed": inputs.seed,
        "root": str(inputs.root.resolve()) if inputs.root is not None else None,
        "options": sorted(inputs.options.items()),
        "splits": sorted(inputs.splits),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name in sorted(inputs.splits):
        split = inputs.splits[name]
        for array in (split.x, split.y):
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(json.dumps([split.paths, [str(f) if f else None for f in split.files], split.digests]).encode())
    if inputs.test_predictions is not None:
        digest.update(np.ascontiguousarray(inputs.test_predictions, dtype=np.int64).tobytes())
    return digest.hexdigest()


def memo_path(folder: Path, key: str) -> Path:
    return folder / MEMO_FOLDER / f"{key}.json"


def recall(folder: Path, key: str, inputs: AuditInputs) -> AuditReport | None:
    """The audit saved under ``key``, checked field by field; ``None`` when absent or not to be trusted."""
    path = memo_path(folder, key)
    try:
        data = json.loads(read_regular(path, MAX_MEMO_BYTES))
        return _report(data, inputs)
    except (OSError, ValueError, TypeError, KeyError):  # absent, too big, not JSON, or not what we wrote
        return None


def remember(folder: Path, key: str, report: AuditReport) -> None:
    """Save ``report`` under ``key`` (atomically); a cache that cannot be written costs nothing but the next audit."""
    try:
        path = memo_path(folder, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**report.to_dict(), "summary": report.summary, "timings_s": report.timings_s}
        write_atomic(path, json.dumps(data, allow_nan=False).encode())
    except (OSError, ValueError):
        pass


def _report(data: Any, inputs: AuditInputs) -> AuditReport:
    if not isinstance(data, dict) or data.get("format") != AUDIT_FORMAT or data.get("classes") != list(inputs.classes):
        raise ValueError("not a memo of this audit")
    if data.get("seed") != inputs.seed or not isinstance(data.get("summary"), dict) or not isinstance(data.get("timings_s"), dict):
        raise ValueError("not a memo of this audit")
    findings = data.get("findings")
    if not isinstance(findings, list):
        raise ValueError("findings")
    root = data.get("root")
    return AuditReport(
        classes=inputs.classes,
        seed=inputs.seed,
        findings=tuple(_finding(f) for f in findings),
        summary=data["summary"],
        timings_s={str(k): _number(v) for k, v in data["timings_s"].items()},
        root=root if isinstance(root, str) else None,
    )


def _finding(data: Any) -> Finding:
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise ValueError("finding")
    paths, splits = data.get("paths"), data.get("splits")
    if not (isinstance(paths, list) and isinstance(splits, list) and 1 <= len(paths) <= 2 and len(splits) == len(paths)):
        raise ValueError("finding paths")
    if not all(isinstance(p, str) for p in paths + splits):
        raise ValueError("finding paths")
    labels = (data.get("given_label"), data.get("suggested_label"))
    if not all(label is None or isinstance(label, str) for label in labels) or not isinstance(data.get("detail"), str):
        raise ValueError("finding labels")
    return Finding(kind=data["kind"], paths=tuple(paths), splits=tuple(splits), score=_number(data.get("score")),
                   given_label=labels[0], suggested_label=labels[1], detail=data["detail"])


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("not a finite number")
    return float(value)
