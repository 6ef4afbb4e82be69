"""``report.html``: one self-contained page per run, for a person who wants to see how it went.

Summary (with a warning when the head collapsed), per-class metrics with the train and test counts,
the confusion matrix and the most-confused pairs, the training curve (and logreg's L2 sweep), the
misclassified test images and the right-but-unsure ones (smallest margin), a sample of every class
(``#data``), the data audit when the run directory holds ``audit.json`` (``#audit``), and the
resolved recipe. Every image is embedded
as a ``data:`` URI and the styling is inline, so the page opens straight from the run directory (or
an e-mail attachment) without a server, and it references no external URL at all.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tlkit.outputs import audit_section, contact_sheet
from tlkit.outputs.html_parts import THUMB_STYLE, thumbnail
from tlkit.outputs.html_parts import e as _e
from tlkit.outputs.html_parts import number as _number
from tlkit.outputs.html_parts import table as _table
from tlkit.outputs.plot_cache import drawn, run_title
from tlkit.outputs.predictions import misclassified, unsure
from tlkit.util.installed import file_stamp

if TYPE_CHECKING:
    from tlkit.outputs.predictions import PredictionRow

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; border: 1px solid #eee; } img.thumb { max-height: 96px; max-width: 128px; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; } .note { color: #555; }
""" + THUMB_STYLE
THUMBNAILS = 60  # the first this many mistakes get a thumbnail in the table (all are listed)


@dataclass(frozen=True)
class ReportInputs:
    """Everything the page shows, as plain data: nothing here needs the engine or a model."""

    title: str
    summary: Sequence[tuple[str, str]]
    metrics: Mapping[str, Any]
    classes: Sequence[str]
    errors: Sequence[PredictionRow]
    recipe: Mapping[str, Any]
    plots: Mapping[str, Path] = field(default_factory=dict)  # heading -> PNG file (missing files are left out)
    notes: Sequence[str] = ()
    unsure: Sequence[PredictionRow] = ()  # right answers with the smallest margin (predictions.unsure)
    sheets: Sequence[contact_sheet.ClassSheet] = ()  # a sample of every class (#data)
    audit: Mapping[str, Any] | None = None  # audit_section.read_audit of the run's audit.json (#audit)
    data_root: Path | None = None  # where the audit's relative paths point


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail_uri(path: str, size: int = 128) -> str | None:
    """A small JPEG of the image as a ``data:`` URI, decoded with the run's limits (a regular file, no decompression bomb); None when it cannot be shown."""
    return thumbnail(path, size)[0]



def _per_class(metrics: Mapping[str, Any], classes: Sequence[str]) -> str:
    per_class = metrics.get("test", {}).get("per_class", {})
    rows = [
        [_e(name), _number(m.get("precision")), _number(m.get("recall")), _number(m.get("f1")), _e(m.get("support"))]
        for name, m in ((name, per_class.get(name, {})) for name in classes)
    ]
    train = metrics.get("class_counts", {}).get("train", {})
    rows = [[*row, _e(train.get(name))] for row, name in zip(rows, classes)]
    return _table(["class", "precision", "recall", "F1", "test images", "train images"], rows, [False, True, True, True, True, True])


def _most_confused(metrics: Mapping[str, Any]) -> str:
    pairs = metrics.get("most_confused", [])
    if not pairs:
        return '<p class="note">no test image was misclassified</p>'
    return _table(["true class", "predicted as", "test images"], [[_e(t), _e(p), _e(n)] for t, p, n in pairs], [False, False, True])


def _warnings(metrics: Mapping[str, Any]) -> str:
    lines = "".join(f"<li>{_e(line)}</li>" for line in metrics.get("warnings", []))
    return f'<div class="warning"><b>warning</b><ul>{lines}</ul></div>' if lines else ""


def _confusion(metrics: Mapping[str, Any], classes: Sequence[str]) -> str:
    matrix = metrics.get("test", {}).get("confusion_matrix", [])
    rows = [[f"<b>{_e(name)}</b>", *(_e(c) for c in row)] for name, row in zip(classes, matrix)]
    return _table(["true \\ predicted", *classes], rows, [False, *([True] * len(classes))])


def _errors(errors: Sequence[PredictionRow], empty: str = "no misclassified test images") -> str:
    if not errors:
        return f'<p class="note">{_e(empty)}</p>'
    rows = []
    for index, row in enumerate(errors):
        uri = _thumbnail_uri(row.path) if index < THUMBNAILS else None
        image = f'<img class="thumb" alt="" src="{uri}">' if uri else ""
        name = Path(row.path).name
        margin = "-" if row.margin is None else f"{row.margin:.3f}"
        rows.append([image, f'<span title="{_e(row.path)}">{_e(name)}</span>', _e(row.true_class or ""), _e(row.predicted_class), f"{row.confidence:.3f}", margin])
    return _table(["", "file", "true class", "predicted", "confidence", "margin"], rows, [False, False, False, False, True, True])


def _plot(heading: str, path: Path) -> str:
    if not path.is_file():
        return ""
    return f'<h2>{_e(heading)}</h2><img class="plot" alt="{_e(heading)}" src="{data_uri(path.read_bytes(), "image/png")}">'


def report_html(inputs: ReportInputs) -> str:
    """The whole page as one string."""
    summary = _table(["", ""], [[_e(k), _e(v)] for k, v in inputs.summary])
    notes = "".join(f"<li>{_e(n)}</li>" for n in inputs.notes)
    recipe = yaml.safe_dump(dict(inputs.recipe), sort_keys=False)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(inputs.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(inputs.title)}</h1>",
        _warnings(inputs.metrics),
        summary,
        f"<ul>{notes}</ul>" if notes else "",
        "<h2>per class (test, with the train counts)</h2>",
        _per_class(inputs.metrics, inputs.classes),
        "<h2>confusion matrix (test; rows: true class, columns: predicted)</h2>",
        _confusion(inputs.metrics, inputs.classes),
        "<h2>most confused pairs (test)</h2>",
        _most_confused(inputs.metrics),
        *(_plot(heading, path) for heading, path in inputs.plots.items()),
        '<h2 id="top-losses">top losses: misclassified test images (' + str(len(inputs.errors)) + "), most confident first</h2>",
        _errors(inputs.errors),
        f"<h2>top losses: right but unsure ({len(inputs.unsure)} with the smallest margin over the runner-up)</h2>",
        _errors(inputs.unsure, "no correct test image"),
        contact_sheet.sheets_html(inputs.sheets, "the data: a sample of every class") if inputs.sheets else "",
        audit_section.audit_html(inputs.audit, inputs.data_root) if inputs.audit is not None else "",
        "<h2>resolved recipe</h2>",
        f"<pre>{_e(recipe)}</pre>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(path: Path, inputs: ReportInputs) -> Path:
    path.write_text(report_html(inputs), encoding="utf-8")
    return path


def summary_rows(recipe_name: str, backbone: str, head: str, metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run summary as (label, value) rows, from ``metrics.json`` data."""

    def percent(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    counts = metrics.get("counts", {})
    rows = [
        ("recipe", recipe_name),
        ("backbone", backbone),
        ("head", head),
        ("images", f"train {counts.get('train', '-')}, test {counts.get('test', '-')}, skipped {metrics.get('skipped_images', 0)}"),
        ("train accuracy", percent(metrics.get("train_accuracy"))),
        ("test accuracy", percent(metrics.get("test_accuracy"))),
        ("test balanced accuracy", percent(metrics.get("test_balanced_accuracy"))),
        ("test errors", str(metrics.get("test_errors", "-"))),
    ]
    rows.extend((f"head chose {key}", _choice(value)) for key, value in metrics.get("head_choices", {}).items() if not isinstance(value, (list, dict)))
    return rows


def _choice(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _draw(draw: Callable[[Any, Path], Path | None], path: Path) -> Path | None:
    """``draw`` given the plots module: matplotlib is imported only when a figure must really be drawn (:mod:`tlkit.outputs.plot_cache`)."""
    from tlkit.outputs import plots

    return draw(plots, path)


@contextmanager
def _plain(folder: Path, name: str) -> Iterator[Path]:
    yield folder / name


def write_visuals(
    folder: Path,
    *,
    recipe: Mapping[str, Any],
    metrics: Mapping[str, Any],
    test_rows: Sequence[PredictionRow],
    notes: Sequence[str] = (),
    opener: Callable[[str], AbstractContextManager[Path]] | None = None,
    samples: Mapping[str, Sequence[tuple[Path | None, int]]] | None = None,
) -> list[Path]:
    """Every picture of a run, then ``report.html`` embedding them; returns the files written.

    Plain inputs: the resolved recipe (``recipe.yaml`` data), ``metrics.json`` data (with
    ``classes``, ``test``, ``history`` and ``head_choices``) and the test prediction rows.
    ``opener(name)`` gives each file's path inside ``folder`` (the run directory passes its
    ``writing``, which turns a full disk into an error naming that very file). ``samples`` (split ->
    ``(file, label)``) gives the page a sample of every class; an ``audit.json`` already in
    ``folder`` gives it the audit section.
    """
    def at(name: str) -> AbstractContextManager[Path]:
        return opener(name) if opener is not None else _plain(folder, name)

    backbone, head = str(recipe["backbone"]["name"]), str(recipe["head"]["name"])
    title = run_title(backbone, head, metrics.get("test_accuracy"))
    classes = list(metrics["classes"])
    errors = misclassified(test_rows)
    written: list[Path | None] = []
    figures = _figures(metrics, classes, errors, title)
    for name, inputs, draw in figures:
        with at(name) as path:
            written.append(drawn(name, inputs, path, functools.partial(_draw, draw, path)))
    headings = {"confusion matrix": "confusion_matrix.png", "training curve": "training_curve.png", "L2 sweep": "l2_sweep.png", "errors grid": "errors.png"}
    inputs = ReportInputs(
        title=title,
        summary=summary_rows(str(recipe.get("name", "")), backbone, head, metrics),
        metrics=metrics,
        classes=classes,
        errors=errors,
        recipe=recipe,
        plots={heading: folder / name for heading, name in headings.items()},
        notes=notes,
        **_extras(folder, recipe, classes, test_rows, samples),
    )
    with at("report.html") as path:
        written.append(write_report(path, inputs))
    return [p for p in written if p is not None]


def _figures(metrics: Mapping[str, Any], classes: list[str], errors: Sequence[PredictionRow], title: str) -> list[tuple[str, Any, Callable[[Any, Path], Path | None]]]:
    """Each picture of a run: its file name, the inputs it is drawn from (its cache key) and how to draw it."""
    choices = metrics.get("head_choices", {})
    x_label = "L-BFGS iteration" if "l2" in choices else "epoch"  # logreg reports one point per iteration
    matrix = metrics["test"]["confusion_matrix"]
    error_inputs = [[file_stamp(r.path), r.true_class, r.predicted_class, r.confidence, r.true_class_probability] for r in errors]
    history = metrics.get("history", [])
    figures: list[tuple[str, Any, Callable[[Any, Path], Path | None]]] = [
        ("confusion_matrix.png", [matrix, classes, title], lambda p, path: p.confusion_matrix_png(matrix, classes, path, title)),
        ("errors.png", [error_inputs, title], lambda p, path: p.errors_png(errors, path, title)),
        (  # a head that keeps an earlier epoch says which
            "training_curve.png", [history, title, choices.get("epoch"), x_label],
            lambda p, path: p.training_curve_png(history, path, title, kept_epoch=choices.get("epoch"), x_label=x_label),
        ),
    ]
    if "l2" in choices:
        sweep = choices.get("l2_sweep", [])
        figures.append(("l2_sweep.png", [sweep, choices["l2"], title], lambda p, path: p.l2_sweep_png(sweep, choices["l2"], path, title)))
    return figures


SAMPLE_PER_CLASS = 6  # images per class and split in the report's #data section, fewer with many classes
SAMPLE_PER_SPLIT = 120  # at most about this many thumbnails per split (at least one per class), so the page stays small


def _extras(folder: Path, recipe: Mapping[str, Any], classes: Sequence[str], test_rows: Sequence[PredictionRow],
            samples: Mapping[str, Sequence[tuple[Path | None, int]]] | None) -> dict[str, Any]:
    """The interpretation parts of the page: unsure answers, a sample per class, the audit (when ``audit.json`` is there)."""
    audit = audit_section.read_audit(folder / "audit.json")
    dataset = recipe.get("dataset", {}) if isinstance(recipe.get("dataset"), Mapping) else {}
    root = (audit or {}).get("root") or dataset.get("root")
    sheets: list[contact_sheet.ClassSheet] = []
    if samples:
        images = {split: [(contact_sheet.SheetImage(path, "/".join(Path(path).parts[-2:]) if path else "shard member"), label) for path, label in items]
                  for split, items in samples.items()}
        per_class = max(1, min(SAMPLE_PER_CLASS, SAMPLE_PER_SPLIT // max(1, len(classes))))
        sheets = contact_sheet.pick(list(classes), images, per_class, int(recipe.get("seed", 0) or 0))
    return {"unsure": unsure(test_rows), "sheets": sheets, "audit": audit, "data_root": Path(root) if isinstance(root, str) else None}
