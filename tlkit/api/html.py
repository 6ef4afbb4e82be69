"""The HTML a result shows in Jupyter: a summary table, the test confusion matrix and the worst mistakes.

Every class name, path and recipe name comes from the user's files and folders, so every piece of text
is escaped (:func:`html.escape`) before it reaches the page: a class folder named ``<img onerror=...>``
shows as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tlkit.api.results import CompareResult, FitResult

ERRORS_SHOWN = 5
_STYLE = "border-collapse:collapse;margin:0.4em 0"
_CELL = "border:1px solid #ccc;padding:2px 8px;text-align:left"


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[object]], caption: str = "") -> str:
    head = "<tr>" + "".join(f"<th style='{_CELL}'>{escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td style='{_CELL}'>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    title = f"<caption style='text-align:left;font-weight:bold'>{escape(caption)}</caption>" if caption else ""
    return f"<table style='{_STYLE}'>{title}{head}{body}</table>"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def fit_html(result: FitResult) -> str:
    """Summary, confusion matrix (rows: true class, columns: predicted) and up to :data:`ERRORS_SHOWN` mistakes."""
    m = result.metrics
    recipe = result.recipe
    summary = [
        ("recipe", recipe.name),
        ("backbone", recipe.backbone.name),
        ("head", recipe.head.name),
        *((f"{recipe.head.name} chose", note) for note in m.head_notes),
        ("images", f"train {m.counts.get('train', 0)}, test {m.counts.get('test', 0)}, skipped {m.skipped_images}"),
        ("train accuracy", _percent(m.train_accuracy)),
        ("test accuracy", _percent(m.test_accuracy)),
        ("test balanced accuracy", _percent(m.test_balanced_accuracy)),
        ("test errors", m.test_errors),
        ("run directory", str(result.run_dir)),
    ]
    parts = [_table(None, summary, "tlkit run")]
    matrix = m.test.confusion_matrix
    if matrix:
        rows = [[f"true {name}", *counts] for name, counts in zip(m.classes, matrix)]
        parts.append(_table(["", *m.classes], rows, "test confusion matrix (rows: true class, columns: predicted)"))
    errors = result.errors
    if errors:
        shown = [(row.path, row.true_class, row.predicted_class, f"{row.confidence:.3f}") for row in errors[:ERRORS_SHOWN]]
        more = f" ({ERRORS_SHOWN} of {len(errors)}; all in errors.csv)" if len(errors) > ERRORS_SHOWN else ""
        parts.append(_table(["image", "true", "predicted", "confidence"], shown, f"most confident mistakes{more}"))
    return "<div>" + "".join(parts) + "</div>"


def compare_html(result: CompareResult) -> str:
    """The ranked table (with the bootstrap interval and ties), then skipped and failed backbones."""
    rows = [
        (r.rank, r.backbone.label, r.head, _percent(r.test_accuracy), f"{_percent(r.ci[0])} - {_percent(r.ci[1])}",
         " ".join(str(t) for t in r.ties_with) or "-", str(r.run_dir))
        for r in result.results
    ]
    parts = [_table(["rank", "backbone", "head", "test accuracy", "95% interval", "ties with", "run directory"], rows, "tlkit compare")]
    if result.skipped:
        parts.append(_table(["backbone", "skipped because"], result.skipped, "skipped"))
    if result.failed:
        parts.append(_table(["backbone", "head", "error"], [(f.backbone.label, f.head, f.error) for f in result.failed], "failed"))
    return "<div>" + "".join(parts) + "</div>"
