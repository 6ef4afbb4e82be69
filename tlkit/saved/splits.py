"""``split.csv``: which file went to which split, saved with every run.

A data set split by tlkit (``imagefolder``'s ``split: {test_fraction, seed}``) exists nowhere but
here, so the run keeps the list: ``split,path,class`` per image, as the loader gave them (files
later skipped as undecodable included; ``bad_images.csv`` names those). :func:`read_split` gives
``tlkit.load`` and ``tlkit features`` the same list back.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from tlkit.contract.specs import Sample
from tlkit.errors import OutputError, RunError
from tlkit.util.regular_files import UnsafeFile, read_regular

COLUMNS = ("split", "path", "class")
MAX_BYTES = 256 * 2**20  # a million images' rows fit many times over


def write_split(path: Path, classes: Sequence[str], splits: Mapping[str, Sequence[Sample]]) -> Path:
    """One row per image of every split, in the loader's order."""
    try:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for split, samples in splits.items():
                writer.writerows((split, str(sample.path), classes[sample.label]) for sample in samples)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); free some space or choose another --out") from None
    return path


def read_split(path: Path) -> dict[str, list[tuple[Path, str]]]:
    """``split -> [(path, class), ...]`` from a run's ``split.csv``; a file that is not the one tlkit writes is one line."""
    if not path.is_file():
        raise RunError(f"{path} is missing; the run was made by an older tlkit (run the recipe again to get it)")
    try:
        text = read_regular(path, MAX_BYTES).decode("utf-8")
    except (OSError, UnsafeFile, UnicodeDecodeError) as exc:
        raise RunError(f"{path} cannot be read ({exc}); run the recipe again") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    if tuple(next(rows, ())) != COLUMNS:
        raise RunError(f"{path} does not start with the columns {','.join(COLUMNS)}; run the recipe again")
    result: dict[str, list[tuple[Path, str]]] = {}
    for number, row in enumerate(rows, start=2):
        if len(row) != len(COLUMNS) or not all(row):
            raise RunError(f"{path} line {number} is not 'split,path,class'; run the recipe again")
        split, file, name = row
        result.setdefault(split, []).append((Path(file), name))
    return result
