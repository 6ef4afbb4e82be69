"""Rich rendering for the CLI: progress bars, tables, and the one-line error/warning format."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tlkit.observer import Observer

# Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room instead.
_WIDTH = None if sys.stdout.isatty() else 200
out = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


def print_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)


def print_warning(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False)


class _Rate(TextColumn):
    """Units per second, e.g. ``183.2 img/s``."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class ConsoleObserver(Observer):
    """Shows the engine's notes, progress bars (rate, ETA) and training points on stderr.

    Off a terminal (CI logs, a pipe) a live bar would only appear once, at the end; there progress
    is plain lines instead, one per 5% (``extracting train: 12/240 img``), so a log or a
    supervising process can see how far a run got.
    """

    def __init__(self, console: Console = err) -> None:
        self.console = console

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        if not self.console.is_terminal:
            with self._plain_task(description, total, unit) as advance:
                yield advance
            return
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, unit=unit)
            yield lambda n: progress.advance(task_id, n)

    @contextmanager
    def _plain_task(self, description: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
        import time

        started = time.perf_counter()
        done = 0
        step = max(1, (total or 0) // 20)
        shown = 0

        def advance(n: int) -> None:
            nonlocal done, shown
            done += n
            if done - shown >= step and (total is None or done < total):
                shown = done
                elapsed = time.perf_counter() - started
                rate = done / elapsed if elapsed > 0 else 0.0
                eta = f", eta {(total - done) / rate:.0f} s" if total is not None and rate > 0 else ""
                self.console.print(
                    f"{description}: {done}/{total if total is not None else '?'} {unit} ({rate:,.1f} {unit}/s{eta})",
                    highlight=False,
                    markup=False,
                )

        yield advance
        seconds = time.perf_counter() - started
        rate = f", {done / seconds:,.1f} {unit}/s" if seconds > 0 and done else ""
        self.console.print(f"{description}: {done}/{total if total is not None else done} {unit} in {seconds:.1f} s{rate}", highlight=False, markup=False)

    def point(self, label: str, values: Mapping[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "epoch")
        self.console.print(f"  {label}: {shown}", highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*("-" if v is None else str(v) for v in row))
    out.print(t)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data) + "\n")


def ago(timestamp: float) -> str:
    """``"3 h ago"``: how long since ``timestamp`` (seconds since the epoch), roughly."""
    import time

    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_evaluation(test: Mapping[str, Any], classes: Sequence[str]) -> None:
    """The test split's per-class precision/recall/F1 table and its confusion matrix."""
    rows = [
        (name, _number(m["precision"]), _number(m["recall"]), _number(m["f1"]), m["support"])
        for name, m in ((name, test["per_class"][name]) for name in classes)
    ]
    table("per class (test)", ["class", "precision", "recall", "F1", "images"], rows)
    matrix = test["confusion_matrix"]
    table(
        "confusion matrix (rows: true class, columns: predicted)",
        ["true \\ predicted", *classes],
        [(name, *row) for name, row in zip(classes, matrix)],
    )
