"""The interpretation lines after a run: the confusion matrix only where it fits the terminal, and
the most-confused pairs (fastai's ``most_confused``) always, so twelve classes never wrap into
unreadable cells. Prints only: the pairs are computed by :func:`tlkit.outputs.metrics.most_confused`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tlkit.cli import console

PAIRS_SHOWN = 10


def table_width(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
    """Columns a rich table of these cells needs: a border, then each cell with its padding and rule."""
    from rich.cells import cell_len

    widths = [cell_len(console.visible(str(c), one_line=True)) for c in columns]
    for row in rows:
        widths = [max(w, cell_len(console.visible(str(v), one_line=True))) for w, v in zip(widths, row)]
    return 1 + sum(w + 3 for w in widths)


def print_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], pairs: Sequence[Sequence[Any]], width: int) -> None:
    """The full matrix when it fits ``width`` columns (else one line saying where it is), then the most-confused pairs."""
    columns = ["true \\ predicted", *classes]
    rows = [(console.visible(name, one_line=True), *row) for name, row in zip(classes, matrix)]
    if table_width(columns, rows) <= width:
        console.table("confusion matrix (rows: true class, columns: predicted)", columns, rows)
    else:
        console.say(f"confusion matrix: {len(classes)} classes do not fit {width} columns; see report.html and confusion_matrix.png")
    if not pairs:
        console.say("most confused: none (no test image was misclassified)")
        return
    shown = list(pairs[:PAIRS_SHOWN])
    console.table(
        f"most confused (test), {len(shown)} of {len(pairs)} pair{'s' if len(pairs) != 1 else ''}",
        ["true class", "predicted as", "images"],
        [(true, predicted, count) for true, predicted, count in shown],
    )
