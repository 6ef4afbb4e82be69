"""Names a user chose (class folders, file names, backbone labels) shown back to them: drawn by
matplotlib as plain text (never mathtext, which a ``$...$`` name would crash after all the work), and
printed to the terminal with control characters escaped (an escape sequence in a class name must not
reach the terminal raw)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

BAD_MATH = ("$\\frac{1}{$", "a$b$c", "$x^{$", "cost $5 and $", "\\$back$slash$")


def _preprocessed(text: str) -> tuple[str, bool]:
    from matplotlib.text import Text

    return Text(text=text)._preprocess_math(text)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", BAD_MATH)
def test_plain_text_is_drawn_as_written(name: str) -> None:
    from tlkit.outputs.plots import plain

    assert _preprocessed(plain(name)) == (name, False)


def test_a_confusion_matrix_of_dollar_names_is_drawn(tmp_path: Path) -> None:
    from tlkit.outputs.plots import confusion_matrix_png

    classes = list(BAD_MATH)
    matrix = [[int(i == j) for j in range(len(classes))] for i in range(len(classes))]
    path = confusion_matrix_png(matrix, classes, tmp_path / "cm.png", title="file:$w$eights{$ + logreg, test accuracy 50%")
    assert path.stat().st_size > 0


def test_an_error_gallery_of_dollar_names_is_drawn(tmp_path: Path) -> None:
    from conftest import make_image

    from tlkit.outputs.plots import errors_png
    from tlkit.outputs.predictions import PredictionRow

    image = make_image(tmp_path / "$x^{$.jpg", (200, 40, 40))
    rows = [PredictionRow(path=str(image), predicted_class=BAD_MATH[0], confidence=0.9, true_class=BAD_MATH[2])]
    assert errors_png(rows, tmp_path / "errors.png", title="$\\frac{$").stat().st_size > 0


def test_a_comparison_chart_of_dollar_labels_is_drawn(tmp_path: Path) -> None:
    from tlkit.run.compare import comparison_png

    path = comparison_png(["file:$a{$.pt + logreg", "timm:x + knn"], [0.5, 0.7], [(0.4, 0.6), (0.6, 0.8)], tmp_path / "c.png", title="$\\frac{$")
    assert path.stat().st_size > 0


HOSTILE = "cats\x1b]0;owned\x07\x1b[2J\x9b31m\u202egnp.exe\rdogs"


def _printed(monkeypatch: pytest.MonkeyPatch, show: object, *args: object) -> str:
    from rich.console import Console

    from tlkit.cli import console

    buffer = io.StringIO()
    fake = Console(file=buffer, width=200, force_terminal=False, color_system=None)
    monkeypatch.setattr(console, "_console", lambda stderr: fake)
    show(*args)  # type: ignore[operator]
    return buffer.getvalue()


def _raw_controls(text: str) -> set[str]:
    return {c for c in text if (ord(c) < 32 and c not in "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"}


@pytest.mark.parametrize("show", ["say", "print_error", "print_warning", "table", "print_evaluation", "note"])
def test_control_characters_in_names_never_reach_the_terminal_raw(monkeypatch: pytest.MonkeyPatch, show: str) -> None:
    from tlkit.cli import console

    if show == "table":
        out = _printed(monkeypatch, console.table, HOSTILE, ["path", HOSTILE], [(HOSTILE, HOSTILE)])
    elif show == "print_evaluation":
        metrics = {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
        out = _printed(monkeypatch, console.print_evaluation, {"per_class": {HOSTILE: metrics, "b": metrics}, "confusion_matrix": [[1, 0], [0, 1]]}, [HOSTILE, "b"])
    elif show == "note":
        out = _printed(monkeypatch, lambda text: console.ConsoleObserver().note(text), f"skipped {HOSTILE}")
    else:
        out = _printed(monkeypatch, getattr(console, show), f"skipped {HOSTILE}: cannot open")
    assert not _raw_controls(out), repr(out)
    if show in ("table", "print_evaluation"):
        assert "\\r" in out  # a name's carriage return or line break stays in its cell, escaped
    assert "\\x1b" in out and "gnp.exe" in out  # shown, escaped, not dropped


def test_visible_keeps_line_breaks_of_messages_but_not_of_cells() -> None:
    from tlkit.cli.console import visible

    assert visible("a\nb\x1b[0m") == "a\nb\\x1b[0m"
    assert visible("a\nb", one_line=True) == "a\\nb"
    assert visible("naïve café 猫") == "naïve café 猫"
