"""The data audit (issue 19): what is wrong with a data set, found from the features tlkit already cached.

``audit(inputs) -> AuditReport`` (:mod:`tlkit.audit.runner`) runs every finder in ``FINDERS``; the
vocabulary they share is :mod:`tlkit.audit.findings`. Imported lazily: ``import tlkit.audit`` loads
no numpy or torch until ``audit`` is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FINDERS", "AuditReport", "audit"]


def __getattr__(name: str) -> Any:
    if name in ("FINDERS", "audit"):
        from tlkit.audit import runner

        return getattr(runner, name)
    if name == "AuditReport":
        from tlkit.audit.report import AuditReport

        return AuditReport
    raise AttributeError(f"module 'tlkit.audit' has no attribute {name!r}")
