"""``report.html#audit``: the audit's findings as a person reads them, from ``audit.json`` alone.

The section shows the count per kind, then each finding with its pictures: duplicates and leaks as
side-by-side pairs, label issues with the given and the suggested label, and every path and score.
``audit.json`` (format 1, :mod:`tlkit.audit.findings`) is read as untrusted input: bounded in size,
checked field by field (a finding that does not fit is skipped and counted, never an exception), and
its paths are opened only inside the data set's root.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tlkit.outputs.html_parts import e, table, thumb_cell

MAX_AUDIT_BYTES = 64 * 1024 * 1024
PICTURED = 40  # findings per kind shown with pictures; the rest are listed (all are in audit.csv)
PAIR_KINDS = ("leak", "exact_duplicate", "near_duplicate")
TITLES = {
    "leak": "test images with a copy in train (leaks)",
    "label_issue": "training labels that look wrong",
    "exact_duplicate": "byte-identical files",
    "near_duplicate": "near-duplicates within a split",
    "outlier": "outliers (far from every class)",
    "nearer_other_class": "images nearer another class's centre",
    "class_size": "class sizes",
    "image_size": "tiny, huge or extreme-aspect images",
}


def read_audit(path: Path) -> dict[str, Any] | None:
    """``audit.json`` as a dict with a ``findings`` list of checked findings, or ``None`` when absent or unusable.

    Unusable (too large, not JSON, another format) gives ``{"error": why}`` so the page says so.
    """
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_AUDIT_BYTES:
            return {"error": f"{path.name} is larger than {MAX_AUDIT_BYTES // 2**20} MiB; not shown"}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {"error": f"{path.name} cannot be read ({type(exc).__name__}); run the audit again"}
    if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("findings"), list):
        return {"error": f"{path.name} is not an audit.json of format 1; run the audit again"}
    findings = [f for f in (_finding(item) for item in data["findings"]) if f is not None]
    return {**data, "findings": findings, "skipped": len(data["findings"]) - len(findings)}


def _finding(item: Any) -> dict[str, Any] | None:
    """One finding with the types format 1 promises, or ``None``."""
    if not isinstance(item, dict):
        return None
    paths, splits, score = item.get("paths"), item.get("splits", []), item.get("score")
    if not isinstance(item.get("kind"), str) or not isinstance(paths, list) or not 1 <= len(paths) <= 2 or not all(isinstance(p, str) for p in paths):
        return None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        return None
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        return None
    labels = [item.get(k) for k in ("given_label", "suggested_label")]
    if not all(label is None or isinstance(label, str) for label in labels) or not isinstance(item.get("detail", ""), str):
        return None
    return {"kind": item["kind"], "paths": paths, "splits": splits, "score": float(score),
            "given_label": labels[0], "suggested_label": labels[1], "detail": item.get("detail", "")}


def inside(root: Path | None, relative: str) -> Path | None:
    """``root / relative`` when it stays inside ``root`` (no absolute path, no ``..`` out of it), else ``None``."""
    if root is None or not relative or "\x00" in relative:
        return None
    candidate = Path(relative)
    if candidate.is_absolute():
        return None
    try:
        base = root.resolve()
        full = (base / candidate).resolve()
        full.relative_to(base)
    except (OSError, ValueError, RuntimeError):
        return None
    return full


def audit_html(audit: Mapping[str, Any], root: Path | None) -> str:
    """The ``<section id="audit">`` of the report."""
    parts = ['<section id="audit"><h2>data audit</h2>']
    if "error" in audit:
        return parts[0] + f'<p class="warning">{e(audit["error"])}</p></section>'
    findings: Sequence[Mapping[str, Any]] = audit["findings"]
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding["kind"]] = counts.get(finding["kind"], 0) + 1
    parts.append(_summary(audit, counts))
    kinds = [k for k in TITLES if k in counts] + sorted(k for k in counts if k not in TITLES)
    for kind in kinds:
        mine = [f for f in findings if f["kind"] == kind]
        parts.append(f'<h3 id="audit-{e(kind)}">{e(TITLES.get(kind, kind))} ({len(mine)})</h3>')
        parts.append(_kind_table(kind, mine, root))
    if audit.get("skipped"):
        parts.append(f'<p class="note">{audit["skipped"]} finding(s) in audit.json did not fit format 1 and are not shown</p>')
    return "".join(parts) + "</section>"


def _summary(audit: Mapping[str, Any], counts: Mapping[str, int]) -> str:
    if not counts:
        return '<p class="note">the audit found nothing worth a look</p>'
    rows = [[e(TITLES.get(kind, kind)), e(kind), str(count)] for kind, count in sorted(counts.items(), key=lambda kv: list(TITLES).index(kv[0]) if kv[0] in TITLES else 99)]
    found = audit.get("summary")
    summary: Mapping[str, Any] = found if isinstance(found, dict) else {}
    lines = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool))
    return table(["finding", "kind", "count"], rows, [False, False, True]) + (f"<ul>{lines}</ul>" if lines else "")


def _kind_table(kind: str, findings: Sequence[Mapping[str, Any]], root: Path | None) -> str:
    rows = []
    for index, finding in enumerate(findings):
        pictures = _pictures(finding, root) if index < PICTURED else ""
        where = "<br>".join(f"{e(split)}: {e(path)}" for path, split in zip(finding["paths"], [*finding["splits"], "", ""]))
        label = ""
        if finding["given_label"] is not None or finding["suggested_label"] is not None:
            label = f"given <b>{e(finding['given_label'])}</b>" + (f", suggested <b>{e(finding['suggested_label'])}</b>" if finding["suggested_label"] else "")
        rows.append([pictures, where, label, f"{finding['score']:.3g}", e(finding["detail"])])
    return table(["", "files", "label", "score", "detail"], rows, [False, False, False, True, False])


def _pictures(finding: Mapping[str, Any], root: Path | None) -> str:
    cells = []
    for path, split in zip(finding["paths"], [*finding["splits"], "", ""]):
        full = inside(root, path)
        reason = "" if full is not None else ("outside the data set's root" if root is not None else "data set root unknown")
        cells.append(thumb_cell(full, f"{split} {Path(path).name}".strip(), reason))
    return f'<div class="pair">{"".join(cells)}</div>' if finding["kind"] in PAIR_KINDS else "".join(cells)
