"""What the CLI shows: progress bars, tables, CSV files, and the one-line error/warning format.

rich is imported on first use, not at import: ``tlkit --help`` and ``--version`` never need it.

Text reaching the terminal often holds a user's names (class folders, file paths, recipe values), so
every line and table goes through :func:`visible`: control characters (escape sequences, carriage
returns, C1 codes, bidirectional overrides) are shown escaped (``\x1b``), never sent raw.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.contract.observer import Observer

if TYPE_CHECKING:
    from rich.console import Console

    from tlkit.outputs.predictions import PredictionRow

# Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room instead.
_OFF_TERMINAL_WIDTH = 200


@cache
def _console(stderr: bool) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=True, width=None if stream.isatty() else _OFF_TERMINAL_WIDTH)


def __getattr__(name: str) -> Any:
    """``console.out`` / ``console.err``: the rich consoles for stdout and stderr, made on first use."""
    if name in ("out", "err"):
        return _console(name == "err")
    raise AttributeError(f"module 'tlkit.cli.console' has no attribute {name!r}")


# C0 and C1 control characters (line breaks and tabs apart) and the invisible bidirectional marks.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_IN_MESSAGES = re.compile(f"[{_CONTROLS}]")
_IN_ONE_LINE = re.compile(f"[{_CONTROLS}\n\t]")


def visible(text: str, *, one_line: bool = False) -> str:
    """``text`` safe for a terminal: control characters shown as Python escapes (``\x1b``, ``\u202e``).

    Line breaks and tabs stay in messages; ``one_line`` (a table cell, a name) escapes them too.
    """
    pattern = _IN_ONE_LINE if one_line else _IN_MESSAGES
    return pattern.sub(lambda found: ascii(found.group())[1:-1], text)


def say(text: str) -> None:
    """One plain line on stdout (no markup, no highlighting)."""
    _console(False).print(visible(text), highlight=False, markup=False)


def print_error(message: str) -> None:
    _console(True).print(f"[bold red]error:[/] {_escape(message)}", highlight=False, markup=True)


def print_warning(message: str) -> None:
    _console(True).print(f"[yellow]warning:[/] {_escape(message)}", highlight=False)


def _escape(text: str, *, one_line: bool = False) -> str:
    """``text`` for rich markup: :func:`visible`, then its square brackets escaped."""
    from rich.markup import escape

    return escape(visible(text, one_line=one_line))


def _rate_column() -> Any:
    """A progress column showing units per second, e.g. ``183.2 img/s``."""
    from rich.progress import TextColumn
    from rich.text import Text

    class Rate(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "it")
            return Text(rate_text(task.completed, task.elapsed, unit), style="progress.data.speed")

    return Rate()


MIN_RATE_SECONDS = 0.2  # a rate over less time is noise: the first epoch of a fast head read "6,303,580 epoch/s"


def rate_text(done: float, seconds: float | None, unit: str) -> str:
    """``183.2 img/s``: units done over the seconds since the work began (``-`` until there is enough to say)."""
    if not done or seconds is None or seconds < MIN_RATE_SECONDS:
        return f"- {unit}/s"
    return f"{done / seconds:,.1f} {unit}/s"


TRAINING_UNITS = ("epoch", "iteration")
POINT_LINES = 10  # training curves print about this many lines, whatever the epochs (and the last point)


class ConsoleObserver(Observer):
    """Shows the engine's notes, progress bars (rate, ETA) and training points on stderr.

    Off a terminal (CI logs, a pipe) a live bar would only appear once, at the end; there progress
    is plain lines instead, one per 5% (``extracting train: 12/240 img``), so a log or a
    supervising process can see how far a run got.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or _console(True)
        self._every = 1  # print every n-th training point (set by the open training task)
        self._held: tuple[str, Mapping[str, float]] | None = None  # the last point, printed when its task ends
        self._shown = False  # whether this curve's first point was printed

    def note(self, text: str) -> None:
        self.console.print(visible(text), highlight=False, markup=False)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        if unit not in TRAINING_UNITS:  # extraction inside a training loop leaves the curve's thinning alone
            with self._task(description, total, unit) as advance:
                yield advance
            return
        self._every, self._shown = (max(1, -(-total // POINT_LINES)) if total else 1), False
        try:
            with self._task(description, total, unit) as advance:
                yield advance
        finally:
            if self._held is not None:  # the curve's last point (an early stop) is always shown
                self._print_point(*self._held)
            self._every, self._held = 1, None

    @contextmanager
    def _task(self, description: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
        description = visible(description, one_line=True)
        if not self.console.is_terminal:
            with self._plain_task(description, total, unit) as advance:
                yield advance
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _rate_column(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task_id = bar.add_task(_escape(description), total=total, unit=unit)  # TextColumn reads markup
            yield lambda n: bar.advance(task_id, n)

    @contextmanager
    def _plain_task(self, description: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
        import time

        started = time.perf_counter()
        done = 0
        step = max(1, (total or 0) // 20) if unit not in TRAINING_UNITS else 10**18  # a training curve's own points show its progress
        shown = 0

        def advance(n: int) -> None:
            nonlocal done, shown
            done += n
            if done - shown >= step and (total is None or done < total):
                shown = done
                elapsed = time.perf_counter() - started
                rate = done / elapsed if elapsed >= MIN_RATE_SECONDS else 0.0
                eta = f", eta {(total - done) / rate:.0f} s" if total is not None and rate > 0 else ""
                self.console.print(
                    f"{description}: {done}/{total if total is not None else '?'} {unit} ({rate_text(done, elapsed, unit)}{eta})",
                    highlight=False,
                    markup=False,
                )

        yield advance
        seconds = time.perf_counter() - started
        rate = f", {rate_text(done, seconds, unit)}" if seconds >= MIN_RATE_SECONDS and done else ""
        self.console.print(f"{description}: {done}/{total if total is not None else done} {unit} in {seconds:.1f} s{rate}", highlight=False, markup=False)

    def point(self, label: str, values: Mapping[str, float]) -> None:
        """A training point: about :data:`POINT_LINES` lines per curve (the first, every n-th epoch, and the last)."""
        step = int(values.get("epoch", 0))
        if self._every > 1 and step % self._every and self._shown:
            self._held = (label, values)
            return
        self._held = None
        self._shown = True
        self._print_point(label, values)

    def _print_point(self, label: str, values: Mapping[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "epoch")
        self.console.print(f"  {visible(label, one_line=True)}: {shown}", highlight=False, markup=False)


def progress(description: str, total: int, *, unit: str = "it", quiet: bool = False) -> Any:
    """A context manager yielding ``advance(n)``: a progress bar on stderr, or nothing when ``quiet``."""
    if quiet:
        return nullcontext(lambda n: None)
    return ConsoleObserver().task(description, total, unit)


def table(title: str | None, columns: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout; ``columns=None`` for a two-column key/value table without a header row."""
    from rich.table import Table

    width = len(rows[0]) if rows else 0
    t = Table(title=None if title is None else _escape(title, one_line=True), title_justify="left", show_header=columns is not None)
    for column in columns if columns is not None else [""] * width:
        t.add_column(_escape(column, one_line=True), overflow="fold")
    for row in rows:
        t.add_row(*("-" if v is None else _escape(str(v)) for v in row))  # a cell may be lines (options_text)
    _console(False).print(t)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def json_ready(data: Any) -> Any:
    """``data`` as :func:`print_json` prints it (tuples as lists, anything else JSON lacks as ``str``)."""
    return json.loads(json.dumps(data, default=str))


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


def count(value: int | None) -> str:
    """``11.7M``, ``860K``: a parameter count at a glance."""
    if value is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return str(value)


def print_evaluation(test: Mapping[str, Any], classes: Sequence[str]) -> None:
    """The test split's per-class precision/recall/F1 table and its confusion matrix."""
    rows = [
        (visible(name, one_line=True), _number(m["precision"]), _number(m["recall"]), _number(m["f1"]), m["support"])
        for name, m in ((name, test["per_class"][name]) for name in classes)
    ]
    table("per class (test)", ["class", "precision", "recall", "F1", "images"], rows)
    matrix = test["confusion_matrix"]
    table(
        "confusion matrix (rows: true class, columns: predicted)",
        ["true \\ predicted", *classes],
        [(visible(name, one_line=True), *row) for name, row in zip(classes, matrix)],
    )


def _notes_label(recipe: Any) -> str:
    """What the head's notes are: its own choices, or (fine-tuning: it chose nothing, "linear chose: fine-tuned" was untrue) how it was trained."""
    return f"{recipe.head.name} head" if getattr(recipe, "finetune", None) is not None else f"{recipe.head.name} chose"


def print_run_summary(recipe: Any, result: Any) -> None:
    """The test evaluation, the run's summary, and the files it skipped (at most 20 shown)."""
    m = result.metrics
    rows = [
        ("recipe", recipe.name),
        ("backbone", recipe.backbone.name),
        ("head", recipe.head.name),
        *((_notes_label(recipe), note) for note in m.head_notes),
        ("images", f"train {m.counts['train']}, test {m.counts['test']}, skipped {m.skipped_images}"),
        ("train accuracy", percent(m.train_accuracy)),
        ("test accuracy", percent(m.test_accuracy)),
        ("test balanced accuracy", percent(m.test_balanced_accuracy)),
        ("test errors", f"{m.test_errors} (errors.csv, errors.png; everything in report.html)"),
        ("time", f"{m.timings_s['total']:.1f} s (extraction {m.timings_s['extract']:.1f} s)"),
        ("saved to", str(result.out_dir)),
    ]
    print_evaluation(m.test.to_dict(), m.classes)
    table("summary", None, rows)
    for line in getattr(result, "audit_lines", ()):
        say(f"audit: {line}")
    bad = result.bad_images
    if bad:
        shown = 20
        table(
            f"skipped {len(bad)} file{'s' if len(bad) != 1 else ''} that could not be used (all in bad_images.csv)",
            ["split", "file", "reason"],
            [(b.split, visible(str(b.path), one_line=True), b.reason) for b in bad[:shown]],
        )
        if len(bad) > shown:
            say(f"and {len(bad) - shown} more: see {result.out_dir / 'bad_images.csv'}")


def prediction_json(row: PredictionRow, top_k: int) -> dict[str, Any]:
    """A ``tlkit predict --json`` line: ``path``, ``class``, ``probability`` (and ``top_k``)."""
    data: dict[str, Any] = {"path": row.path, "class": row.predicted_class, "probability": row.confidence}
    if top_k > 1:
        data["top_k"] = [{"class": t.name, "probability": t.probability} for t in row.top]
    return data


def skipped_json(path: Path | str, reason: str) -> dict[str, str]:
    """A ``tlkit predict --json`` line for a file that could not be classified."""
    return {"path": str(path), "error": reason}


def print_predictions(rows: Sequence[PredictionRow], bad: Sequence[tuple[Path, str]], top_k: int) -> None:
    """The predictions as a table, then one warning per file that could not be classified."""
    if rows:
        columns = ["path", "class", "probability"] + ([f"top {top_k}"] if top_k > 1 else [])
        table(None, columns, [_prediction_cells(r, top_k) for r in rows])
    for path, reason in bad:
        print_warning(f"skipped {path}: {reason}")


def _prediction_cells(row: PredictionRow, top_k: int) -> list[str]:
    cells = [visible(row.path, one_line=True), visible(row.predicted_class, one_line=True), f"{row.confidence:.4f}"]
    if top_k > 1:
        cells.append(", ".join(f"{visible(t.name, one_line=True)} {t.probability:.4f}" for t in row.top))
    return cells


def write_csv(path: Path, rows: Sequence[PredictionRow], bad: Sequence[tuple[Path, str]], top_k: int) -> None:
    """Predictions as CSV (path, class, probability, top_k, error), written whole or not at all."""
    from tlkit.errors import OutputError

    columns = ["path", "class", "probability", "top_k", "error"]
    path = Path(path)
    from tlkit.util.atomic import atomic_path

    try:
        with atomic_path(path) as staging, staging.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                top = "; ".join(f"{t.name} {t.probability:.6f}" for t in row.top) if top_k > 1 else ""
                writer.writerow([row.path, row.predicted_class, row.confidence, top, ""])
            writer.writerows([str(p), "", "", "", reason] for p, reason in bad)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); nothing was written there") from None


def yaml_value(value: Any) -> str:
    """A default as a recipe would spell it: ``null``, ``true``, ``[0, 0, 0]``, ``val``."""
    import yaml

    text: str = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def options_text(options: Sequence[Mapping[str, Any]]) -> str:
    """One line per option: ``name: type = default  help`` (``(required)`` when it has no default)."""
    lines = []
    for o in options:
        default = "(required)" if o["default"] == "required" else f"= {yaml_value(o['default'])}"
        lines.append(f"{o['name']}: {o['type']} {default}" + (f"  {o['help']}" if o["help"] else ""))
    return "\n".join(lines) or "-"


def print_entries(rows: Sequence[Mapping[str, Any]]) -> None:
    """Data set loaders or heads: name, plugin, description, options."""
    table(None, ["name", "plugin", "description", "options"], [(r["name"], r["plugin"], r["description"], options_text(r["options"])) for r in rows])


def print_backbones(rows: Sequence[Mapping[str, Any]]) -> None:
    yes_no = {True: "yes", False: "no", None: "?"}
    table(
        None,
        ["name", "dim", "input", "params", "pretrained", "licence", "offline weights", "plugin", "description"],
        [
            (
                r["name"],
                r["feature_dim"],
                r.get("input_size"),
                count(r.get("num_params")),
                r.get("pretrained_tag"),
                r.get("license"),
                yes_no[r["weights_offline"]],
                r["plugin"],
                r["description"],
            )
            for r in rows
        ],
    )


def print_plugins(rows: Sequence[Mapping[str, Any]]) -> None:
    """The plugins table, then one unbroken line per skipped plugin saying why (a table cell would fold it)."""
    table(
        None,
        ["name", "version", "hooks", "registered", "status"],
        [
            (
                r["name"],
                r["version"],
                ", ".join(r["hooks"]),
                "; ".join(f"{k}: {v if isinstance(v, int) else ', '.join(v)}" for k, v in r["registered"].items()),
                r["status"],
            )
            for r in rows
        ],
    )
    for r in rows:
        if r["error"]:
            say(f"{r['name']} {r['status']}: {r['error']}")


def print_cache_entries(entries: Sequence[Any], *, wide: bool = False) -> None:
    """Cache entries; keys and weights hashes cut short unless ``wide``."""
    from tlkit.util.units import human_bytes

    key_len, weights_len = (None, None) if wide else (12, 19)
    table(
        None,
        ["key", "backbone", "weights", "precision", "features", "size", "last used"],
        [
            (e.key[:key_len], e.backbone, e.weights[:weights_len], e.precision, e.features, human_bytes(e.bytes), ago(e.last_used))
            for e in entries
        ],
    )


def print_cache_summary(data: Mapping[str, Any]) -> None:
    from tlkit.util.units import human_bytes

    table(
        None,
        None,
        [
            ("path", f"{data['path']} (set {data['env']} to move it)"),
            ("entries", data["entries"]),
            ("features", data["features"]),
            ("size", human_bytes(data["bytes"])),
            *_store_rows(data),
        ],
    )


def _store_rows(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """`tlkit cache info`'s lines for each store beside the features, and the runs holding the cache."""
    from tlkit.util.units import human_bytes

    stores = data.get("stores", {})
    rows: list[tuple[str, Any]] = []
    if "converted_models" in stores:
        models = stores["converted_models"]
        rows.append(("converted models", f"{models['entries']} ({human_bytes(models['bytes'])}) in {models['path']}"))
    if "listing_index" in stores:
        rows.append(("listing index", f"{human_bytes(stores['listing_index']['bytes'])} in {stores['listing_index']['path']}"))
    if data.get("in_use_by"):
        rows.append(("in use by", "runs with pid " + ", ".join(str(pid) for pid in data["in_use_by"])))
    return rows


def exit_code_for(exc: BaseException, *, debug: bool) -> int:
    """Report ``exc`` the CLI way and return the exit code; re-raise anything that is a bug.

    Usage errors (of click or of typer's bundled copy of click) and :class:`TlkitError` are one line
    and exit 2; Ctrl-C is 130; ``typer.Exit`` keeps its code.
    """
    from tlkit.cli.usage import classify
    from tlkit.errors import TlkitError

    kind, detail = classify(exc)
    if kind == "exit":
        return int(detail)
    if kind == "help":  # `tlkit` or `tlkit cache` alone: show what there is, as click does, exit 2
        sys.stdout.write(str(detail).rstrip("\n") + "\n")
        return 2
    if kind == "usage":
        print_error(str(detail))
        return 2
    if kind == "interrupt" or isinstance(exc, KeyboardInterrupt):
        print_error(str(exc) if isinstance(exc, KeyboardInterrupt) and str(exc) else "interrupted; nothing was written")
        return 130
    if isinstance(exc, TlkitError):
        if debug:
            import traceback

            traceback.print_exception(exc)
        print_error(str(exc))
        return 2
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    raise exc


def print_shards(written: Any) -> None:
    """What ``tlkit shards make`` wrote, and the ``--set`` lines that run it."""
    table(None, ["split", "images", "shards", "pattern"], [(s, written.images[s], len(p), written.pattern(s)) for s, p in written.splits.items()])
    skipped = getattr(written, "skipped", ())
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        say(f"left out {len(skipped)} link{'s' if len(skipped) != 1 else ''} to files outside the folder (never packed): {shown}")
    say(f"run them with: --set dataset.name=webdataset --set 'dataset.train={written.pattern('train')}' --set 'dataset.test={written.pattern('test')}'")


def print_compare(result: Any) -> None:
    """The ranked ``tlkit compare`` table, the skipped backbones, and the files written."""
    table(
        f"{len(result.results)} results, best first (ties: the paired bootstrap cannot separate them)" + (f", {len(result.failed)} failed" if result.failed else ""),
        ["#", "backbone", "head", "test acc", "95% interval", "balanced acc", "dim", "params", "img/s", "ties with"],
        [
            (
                r.rank, r.backbone.label, r.head, percent(r.test_accuracy), f"{percent(r.ci[0])} - {percent(r.ci[1])}",
                percent(r.balanced_accuracy), r.feature_dim, f"{r.parameters / 1e6:.1f} M",
                "cached" if r.images_per_s is None else f"{r.images_per_s:.1f}", ", ".join(f"#{t}" for t in r.ties_with) or "-",
            )
            for r in result.results
        ]
        + [("-", f.backbone.label, f.head, "failed", f.error, "", "", "", "", "") for f in result.failed],
    )
    for failure in result.failed:
        print_warning(f"failed {failure.backbone.label} + {failure.head}: {failure.error}")
    for name, reason in result.skipped:
        print_warning(f"skipped {name}: {reason}")
    say("wrote " + ", ".join(str(p) for p in result.files.values()))
