"""``csv``: images listed in a CSV manifest, ``path,label[,split]`` under a header, the form Kaggle-style sets ship in.

Paths are relative to the CSV's folder (or ``root``), and confined to it: no ``..``, no absolute path
outside it, no link that leads out of it. With a ``split`` column each row says ``train`` or ``test``
(``dataset.train``/``dataset.test`` name the values); without one, each class is split by tlkit's
one seeded holdout rule (``tlkit.holdout_split``, as ``imagefolder``'s ``split:``), each row keyed by its
path as written. The CSV is untrusted: bounded in bytes (``TLKIT_MAX_MANIFEST_BYTES``) and rows
(``TLKIT_MAX_MANIFEST_ROWS``), and every row checked before any image is opened; whatever is wrong
(a missing file, a path that leads out, a row twice, an empty label, an unknown split or column) is one
line naming the CSV and its line, with the closest name where a name was misspelt. Whether a listed file
decodes is the engine's business (``images.on_bad_image``), as for folders.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from annotated_types import Ge, Gt, Lt
from pydantic import ConfigDict

import tlkit
from tlkit.errors import DataError, did_you_mean

MANIFEST_BYTES_ENV = "TLKIT_MAX_MANIFEST_BYTES"
MANIFEST_ROWS_ENV = "TLKIT_MAX_MANIFEST_ROWS"
DEFAULT_MAX_BYTES = 256 * 2**20
DEFAULT_MAX_ROWS = 5_000_000


@dataclass(frozen=True)
class CsvSplitOptions:
    __pydantic_config__ = ConfigDict(extra="forbid")

    test_fraction: Annotated[float, Gt(0), Lt(1)] = field(default=0.2, metadata={"help": "share of each class's rows held out as test"})
    seed: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "which rows are held out (same seed, same split)"})


@dataclass(frozen=True)
class CsvOptions:
    file: str = field(metadata={"help": "the CSV manifest: a header naming path and label (and split) columns, one image per row"})
    root: str | None = field(default=None, metadata={"help": "folder the CSV's paths are relative to and confined to (default: the CSV's folder)"})
    train: str = field(default="train", metadata={"help": "the split column's value for training rows"})
    test: str = field(default="test", metadata={"help": "the split column's value for test rows"})
    path_column: str = field(default="path", metadata={"help": "header name of the image path column"})
    label_column: str = field(default="label", metadata={"help": "header name of the class column"})
    split_column: str = field(default="split", metadata={"help": "header name of the split column (optional in the CSV)"})
    split: CsvSplitOptions | None = field(
        default=None, metadata={"help": "{test_fraction, seed} for a CSV without a split column (default 0.2, 0)"}
    )

    def __post_init__(self) -> None:
        if self.train == self.test:
            raise ValueError(f"train and test must be different split names (both are '{self.train}')")


@dataclass(frozen=True)
class Row:
    """One checked row: where it is in the CSV, its file, the path as written (its holdout key), label and split."""

    line: int
    path: Path
    key: str
    label: str
    split: str | None


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else float(default)
    except ValueError:
        raise DataError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise DataError(f"{name}={raw!r} must be greater than 0")
    return int(min(value, 2**62)) if math.isfinite(value) else 2**62


def _text(csv_file: Path) -> str:
    """The CSV's text: a regular file within the byte bound, UTF-8 (a spreadsheet's BOM allowed)."""
    limit = _limit(MANIFEST_BYTES_ENV, DEFAULT_MAX_BYTES)
    try:
        info = os.stat(csv_file)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{csv_file} is not a regular file; set dataset.file to a CSV manifest")
        if info.st_size > limit:
            raise DataError(f"{csv_file} is {info.st_size / 2**20:.1f} MiB, over {MANIFEST_BYTES_ENV} ({limit / 2**20:g} MiB); raise it if you trust the file")
        with open(csv_file, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise DataError(f"{csv_file} does not exist; set dataset.file to a CSV manifest (path,label[,split])") from None
    except OSError as exc:
        raise DataError(f"cannot read {csv_file} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise DataError(f"{csv_file} grew over {MANIFEST_BYTES_ENV} ({limit / 2**20:g} MiB) while it was read")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_file} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None


def _columns(header: list[str], csv_file: Path, options: CsvOptions) -> tuple[int, int, int | None]:
    names = [h.strip() for h in header]
    found: list[int] = []
    for want, key in ((options.path_column, "path_column"), (options.label_column, "label_column")):
        if want not in names:
            raise DataError(
                f"{csv_file}: line 1: the header has no '{want}' column{did_you_mean(want, names)} "
                f"(it has {', '.join(repr(n) for n in names[:8])}); fix the header or set dataset.{key}"
            )
        found.append(names.index(want))
    split = names.index(options.split_column) if options.split_column in names else None
    return found[0], found[1], split


def _inside(raw: str, line: int, csv_file: Path, root: Path, real_root: str) -> Path:
    """The row's file: relative to ``root`` and inside it (through every link), a regular file."""
    where = f"{csv_file}: line {line}"
    if not raw:
        raise DataError(f"{where}: the path is empty; every row names an image file")
    written = raw.replace("\\", "/")  # a CSV saved on Windows: its separators
    if ".." in PurePosixPath(written).parts:
        raise DataError(f"{where}: the path {raw!r} holds '..'; paths stay inside {root} (set dataset.root to a folder above)")
    path = Path(written) if Path(written).is_absolute() else root / written
    real = os.path.realpath(path)
    if not (real + os.sep).startswith(real_root.rstrip(os.sep) + os.sep):
        raise DataError(f"{where}: {raw!r} leads outside {root} (an absolute path or a link); list only files inside it, or set dataset.root")
    try:
        info = os.stat(real)
    except OSError:
        parent = Path(real).parent
        names = [p.name for p in itertools.islice(parent.iterdir(), 10_000)] if parent.is_dir() else []  # bounded: a huge folder is not listed whole
        raise DataError(f"{where}: {raw!r} does not exist{did_you_mean(Path(raw).name, names)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{where}: {raw!r} is not a regular file")
    return path


def _row_split(value: str, line: int, csv_file: Path, options: CsvOptions) -> str:
    if value in (options.train, options.test):
        return "train" if value == options.train else "test"
    raise DataError(
        f"{csv_file}: line {line}: unknown split {value!r}{did_you_mean(value, [options.train, options.test])} "
        f"(the split column holds '{options.train}' or '{options.test}'; dataset.train and dataset.test name them)"
    )


def read_manifest(csv_file: Path, root: Path, options: CsvOptions) -> tuple[list[Row], bool]:
    """Every row, checked, in the CSV's order; and whether the CSV has a split column."""
    max_rows = _limit(MANIFEST_ROWS_ENV, DEFAULT_MAX_ROWS)
    reader = csv.reader(io.StringIO(_text(csv_file), newline=""))
    real_root = os.path.realpath(root)
    rows: list[Row] = []
    seen: dict[str, int] = {}  # each path as written -> its first line
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{csv_file} is empty; it needs a header (path,label[,split]) and one row per image")
        path_at, label_at, split_at = _columns(header, csv_file, options)
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            line = reader.line_num
            if len(rows) >= max_rows:
                raise DataError(f"{csv_file}: more than {max_rows} rows ({MANIFEST_ROWS_ENV}); raise it if you trust the file")
            rows.append(_row(cells, line, csv_file, (path_at, label_at, split_at), (root, real_root), options, seen))
    except csv.Error as exc:
        raise DataError(f"{csv_file}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise DataError(f"{csv_file} lists no images; add one row per image under the header")
    return rows, split_at is not None


def _row(cells: list[str], line: int, csv_file: Path, at: tuple[int, int, int | None], roots: tuple[Path, str],
         options: CsvOptions, seen: dict[str, int]) -> Row:
    path_at, label_at, split_at = at
    if len(cells) <= max(i for i in at if i is not None):
        raise DataError(f"{csv_file}: line {line}: {len(cells)} cells, fewer than the header's columns")
    raw, label = cells[path_at].strip(), cells[label_at].strip()
    path = _inside(raw, line, csv_file, *roots)
    key = os.path.normpath(raw.replace("\\", "/"))
    if key in seen:
        raise DataError(f"{csv_file}: line {line}: {raw!r} is listed twice (first on line {seen[key]}); list each image once")
    seen[key] = line
    if not label:
        raise DataError(f"{csv_file}: line {line}: the label of {raw!r} is empty; every row needs its class")
    split = _row_split(cells[split_at].strip(), line, csv_file, options) if split_at is not None else None
    return Row(line, path, PurePosixPath(key).as_posix(), label, split)


def _by_column(rows: list[Row], csv_file: Path) -> tuple[tuple[str, ...], dict[str, list[tlkit.Sample]]]:
    classes = tuple(sorted({r.label for r in rows if r.split == "train"}))
    if not classes:
        raise DataError(f"{csv_file} has no training rows; mark some rows with the train split")
    for r in rows:
        if r.split == "test" and r.label not in classes:
            raise DataError(f"{csv_file}: line {r.line}: class {r.label!r} has no training rows{did_you_mean(r.label, classes)}")
    splits = {name: [tlkit.Sample(r.path, classes.index(r.label)) for r in rows if r.split == name] for name in ("train", "test")}
    if not splits["test"]:
        raise DataError(f"{csv_file} has no test rows; mark some rows with the test split (or drop the split column to split by seed)")
    return classes, splits


def _by_seed(rows: list[Row], csv_file: Path, split: CsvSplitOptions, notes: list[str]) -> tuple[tuple[str, ...], dict[str, list[tlkit.Sample]]]:
    classes = tuple(sorted({r.label for r in rows}))
    labels = [classes.index(r.label) for r in rows]
    held = tlkit.holdout_split([r.key for r in rows], labels, split.test_fraction, split.seed)
    if not held.test:
        raise DataError(f"{csv_file}: no class has two rows, so none can be held out as test; add rows or a split column")
    samples = [tlkit.Sample(r.path, label) for r, label in zip(rows, labels)]
    splits = {"train": [s for i, s in enumerate(samples) if i not in held.test], "test": [s for i, s in enumerate(samples) if i in held.test]}
    notes.append(f"{csv_file} has no split column: {split.test_fraction:.0%} of each class held out as test (seed {split.seed}; split.csv in the run directory)")
    notes.extend(f"class '{classes[c]}' has a single row: it stays in train (its test recall cannot be measured)" for c in held.single_image_classes)
    return classes, splits


def load_csv(options: CsvOptions) -> tlkit.LoadedDataset:
    """Images listed in a CSV manifest (path,label[,split]), paths relative to the CSV's folder."""
    csv_file = Path(options.file).expanduser()
    root = Path(options.root).expanduser() if options.root else csv_file.parent
    if not root.is_dir():
        raise DataError(f"dataset.root {root} is not a folder; set it to the folder the CSV's paths start from")
    rows, has_split = read_manifest(csv_file, root, options)
    notes: list[str] = []
    if has_split and options.split is not None:
        raise DataError(f"{csv_file} has a '{options.split_column}' column; remove dataset.split (or the column) so that one of them decides")
    if has_split:
        classes, splits = _by_column(rows, csv_file)
    else:
        classes, splits = _by_seed(rows, csv_file, options.split or CsvSplitOptions(), notes)
    notes.append(f"{csv_file}: {len(rows)} rows, train {len(splits['train'])}, test {len(splits['test'])}")
    return tlkit.LoadedDataset(classes=classes, splits=splits, notes=tuple(notes))


@tlkit.hookimpl
def register_datasets(register: Any) -> None:
    register(
        tlkit.DatasetSpec(
            name="csv",
            load=load_csv,
            description="images listed in a CSV manifest (path,label[,split]), paths relative to the CSV and confined to its folder",
            options=CsvOptions,
        )
    )
