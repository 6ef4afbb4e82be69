"""``labelled_csv``: images listed in CSV files of ``path,label`` rows.

For data that does not live in one folder per class: an export from a labelling tool, a subset of a
larger collection, several labels kept apart from the images. Paths are relative to the CSV file's
folder (or absolute); an optional first row ``path,label`` is a header. Classes are the labels of
the training file, sorted; a test label the training file lacks is an error, as is a listed image
that does not exist, each naming the file and line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import tlkit
from tlkit.errors import DataError


@dataclass(frozen=True)
class LabelledCsvOptions:
    train: str = field(metadata={"help": "CSV of path,label rows for training (paths relative to the CSV)"})
    test: str = field(metadata={"help": "CSV of path,label rows for testing"})
    delimiter: str = field(default=",", metadata={"help": "column separator (one character)"})

    def __post_init__(self) -> None:
        # Checked when the recipe is read, before any file is opened: tlkit reports a ValueError
        # raised here as one line naming the section ("'dataset': value error, ...").
        if len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, not {self.delimiter!r}")


def read_rows(csv_path: Path, delimiter: str) -> list[tuple[Path, str]]:
    """(image path, label) per row of ``csv_path``; every problem names the file and line."""
    if not csv_path.is_file():
        raise DataError(f"CSV file {csv_path} does not exist; set dataset.train / dataset.test to your CSV files")
    rows: list[tuple[Path, str]] = []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.reader(handle, delimiter=delimiter), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if line == 1 and [c.lower() for c in cells] == ["path", "label"]:
                continue
            if len(cells) != 2 or not all(cells):
                raise DataError(f"{csv_path}:{line}: expected two columns 'path{delimiter}label', got {row!r}")
            path = Path(cells[0]).expanduser()
            path = path if path.is_absolute() else csv_path.parent / path
            if not path.is_file():
                raise DataError(f"{csv_path}:{line}: image {path} does not exist")
            rows.append((path, cells[1]))
    if not rows:
        raise DataError(f"CSV file {csv_path} lists no images")
    return rows


def load_labelled_csv(options: LabelledCsvOptions) -> tlkit.LoadedDataset:
    """Images listed in CSV files of path,label rows."""
    train_csv, test_csv = Path(options.train).expanduser(), Path(options.test).expanduser()
    train = read_rows(train_csv, options.delimiter)
    test = read_rows(test_csv, options.delimiter)
    classes = tuple(sorted({label for _, label in train}))
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({label for _, label in test} - set(classes))
    if unknown:
        raise DataError(f"{test_csv} has labels that {train_csv} lacks ({', '.join(unknown)}); the classes of train and test must agree")
    splits = {
        "train": [tlkit.Sample(path, index[label]) for path, label in train],
        "test": [tlkit.Sample(path, index[label]) for path, label in test],
    }
    return tlkit.LoadedDataset(classes=classes, splits=splits)


def labelled_csv_spec() -> tlkit.DatasetSpec:
    return tlkit.DatasetSpec(
        name="labelled_csv",
        load=load_labelled_csv,
        options=LabelledCsvOptions,
        description="images listed in train/test CSV files of path,label rows (paths relative to the CSV)",
    )
