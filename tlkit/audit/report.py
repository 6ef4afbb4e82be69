"""What an audit found, ranked, and how it is written: ``audit.json`` (format 1) and ``audit.csv``, each atomically."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.audit.findings import AUDIT_FORMAT, CSV_COLUMNS, KINDS, Finding
from tlkit.audit.summary import summary_lines
from tlkit.errors import OutputError
from tlkit.util.atomic import write_atomic

AUDIT_JSON = "audit.json"
AUDIT_CSV = "audit.csv"


def ranked(findings: Sequence[Finding]) -> list[Finding]:
    """Kind order (:data:`KINDS`), then score (highest first), then paths: one order for one input."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order.get(f.kind, len(order)), -f.score, f.paths, f.splits))


@dataclass(frozen=True)
class AuditReport:
    """The ranked findings, the summary figures, and the seconds each finder took."""

    classes: tuple[str, ...]
    seed: int
    findings: tuple[Finding, ...]
    summary: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    root: str | None = None  # the data set's root, absolute: the findings' paths are relative to it (the report's thumbnails)

    def to_dict(self) -> dict[str, Any]:
        """``audit.json``'s layout (format 1, :mod:`tlkit.audit.findings`)."""
        return {
            "format": AUDIT_FORMAT,
            "seed": self.seed,
            "classes": list(self.classes),
            **({"root": self.root} if self.root else {}),
            "counts": dict(self.summary.get("counts", {})),
            "summary": dict(self.summary),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "findings": [f.to_dict() for f in self.findings],
        }

    def lines(self, where: str = "audit.csv") -> list[str]:
        """The few lines for the terminal (``where`` names the place to look: the report or the CSV)."""
        return summary_lines(self.summary, where)

    def contents(self) -> dict[str, bytes]:
        """The bytes of ``audit.json`` and ``audit.csv`` (a run writes them through its own run directory)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(f.csv_row() for f in self.findings)
        return {AUDIT_JSON: (json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n").encode(), AUDIT_CSV: buffer.getvalue().encode()}

    def write(self, folder: Path) -> tuple[Path, Path]:
        """``audit.json`` and ``audit.csv`` in ``folder``, each complete or absent."""
        contents = self.contents()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            json_path = write_atomic(folder / AUDIT_JSON, contents[AUDIT_JSON])
            csv_path = write_atomic(folder / AUDIT_CSV, contents[AUDIT_CSV])
        except OSError as exc:
            raise OutputError(f"cannot write the audit into {folder} ({exc.strerror or exc}); choose another folder") from None
        return json_path, csv_path
