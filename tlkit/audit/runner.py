"""``audit(inputs)``: run every finder, rank what they found, summarise.

:data:`FINDERS` is the one list of finders; a new one is a function ``find_x(inputs) -> list[Finding]``
added there. Each is timed (``audit.json``'s ``timings_s``) and the report is the same for the same
inputs and seed: finders are seeded and the ranking breaks every tie.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from tlkit.audit.exact_duplicates import find_exact_duplicates
from tlkit.audit.findings import AuditInputs, Finding
from tlkit.audit.label_issues import find_label_issues
from tlkit.audit.neighbours import find_nearer_other_class, find_outliers
from tlkit.audit.report import AuditReport, ranked
from tlkit.audit.sizes import find_class_sizes, find_image_sizes
from tlkit.audit.summary import summarise

Finder = Callable[[AuditInputs], list[Finding]]

FINDERS: tuple[Finder, ...] = (
    find_label_issues,
    find_exact_duplicates,
    find_outliers,
    find_nearer_other_class,
    find_class_sizes,
    find_image_sizes,
)


def audit(inputs: AuditInputs, finders: Sequence[Finder] = FINDERS) -> AuditReport:
    """Everything ``finders`` find in ``inputs``, ranked, with the summary (leaks, accuracy without them)."""
    found: list[Finding] = []
    timings: dict[str, float] = {}
    for finder in finders:
        start = time.perf_counter()
        found.extend(finder(inputs))
        timings[finder.__name__.removeprefix("find_")] = time.perf_counter() - start
    findings = tuple(ranked(found))
    return AuditReport(classes=inputs.classes, seed=inputs.seed, findings=findings, summary=summarise(inputs, findings), timings_s=timings)
