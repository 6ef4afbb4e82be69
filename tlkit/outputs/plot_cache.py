"""Draw a plot only when what it shows changed: PNGs kept by a digest of their inputs.

Importing matplotlib and drawing a run's three or four figures takes one to two seconds, longer
than the rest of a warm rerun after the imports. A rerun of the same recipe on cached features
trains the same head and draws the very same pictures, so each PNG is kept in the cache folder
(``plots/``) under a digest of everything it is drawn from: the plot's name, its data (the
confusion matrix, the history, the mistakes with each image file's size and modification time),
the plotting code (``plots.py``'s size and modification time, matplotlib's version). The file name
also carries the sha256 of the PNG's bytes, checked when it is read back: a kept plot that was
altered or cut short is drawn again, never copied. matplotlib is imported only when something is
drawn. The plot goes into the run's staging folder like every other file, so a run directory
never shows half a plot.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlkit.util.atomic import write_atomic
from tlkit.util.hashing import json_sha256
from tlkit.util.installed import file_stamp
from tlkit.util.locations import cache_root
from tlkit.util.regular_files import UnsafeFile, read_regular

FOLDER = "plots"
FORMAT = 1
MAX_BYTES = 16 * 2**20  # a run's PNG is tens of KB (an errors grid a few MB at most)


def run_title(backbone: str, head: str, test_accuracy: float | None) -> str:
    """``"timm:resnet50 + logreg, test accuracy 94.8%"``: what every plot is titled with."""
    accuracy = "-" if test_accuracy is None else f"{100 * test_accuracy:.1f}%"
    return f"{backbone} + {head}, test accuracy {accuracy}"


def _code() -> list[Any]:
    try:
        version = importlib.metadata.version("matplotlib")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return [FORMAT, version, file_stamp(Path(__file__).with_name("plots.py"))]


def key_of(name: str, inputs: Any) -> str:
    """The digest a plot is kept under: its name, its inputs (plain JSON data) and the plotting code."""
    return json_sha256({"plot": name, "inputs": inputs, "code": _code()})[:40]


def _kept(folder: Path, key: str) -> bytes | None:
    """The kept PNG for ``key`` whose bytes match the sha256 in its name, or None."""
    for candidate in sorted(folder.glob(f"{key}-*.png")):
        try:
            data = read_regular(candidate, MAX_BYTES)
        except (OSError, UnsafeFile):
            continue
        if candidate.stem == f"{key}-{hashlib.sha256(data).hexdigest()[:32]}":
            return data
        try:
            candidate.unlink()  # altered or cut short: drawn again below
        except OSError:
            pass
    return None


def drawn(name: str, inputs: Any, path: Path, draw: Callable[[], Path | None]) -> Path | None:
    """``path`` holding the plot of ``inputs``: copied from the cache when kept, else ``draw()`` (and kept)."""
    folder = cache_root() / FOLDER
    key = key_of(name, inputs)
    data = _kept(folder, key) if folder.is_dir() else None
    if data is not None:
        path.write_bytes(data)
        return path
    result = draw()
    if result is None or not result.is_file():
        return result
    try:
        data = read_regular(result, MAX_BYTES)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{key}-{hashlib.sha256(data).hexdigest()[:32]}.png", data)
    except (OSError, UnsafeFile):
        pass  # an unwritable or full cache only means the next run draws it again
    return result
