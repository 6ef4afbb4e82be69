"""Acting on an audit: ``--write-exclusions FILE`` writes the flagged files, ``dataset.exclude: FILE`` leaves them out.

The exclusions file is plain UTF-8 text: one image path per line, relative to the data root (the
dataset's ``root`` option, else the folder all its images share); blank lines and lines starting
with ``#`` are ignored (the writer puts each finding's kind and reason there). A hand-written list works
as well as a generated one. Nothing in the user's folders is touched: the engine filters the
loader's file list (every loader's), and the run directory records what it left out (``excluded.csv``).

The file is untrusted input: a regular file of at most :data:`MAX_EXCLUDE_BYTES`, UTF-8 text, and
every path must stay inside the data root (no ``..`` escape, no absolute path elsewhere).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlkit.audit.findings import Finding
from tlkit.contract.specs import LoadedDataset, Sample
from tlkit.errors import DataError, OutputError
from tlkit.util.atomic import write_atomic
from tlkit.util.regular_files import UnsafeFile, read_regular

MAX_EXCLUDE_BYTES = 16 << 20  # 16 MiB: some 200k paths
DEFAULT_KINDS = ("leak", "exact_duplicate", "near_duplicate", "label_issue", "outlier")
EXCLUDABLE_KINDS = (*DEFAULT_KINDS, "nearer_other_class", "image_size")


def data_root(options: Any, dataset: LoadedDataset) -> Path:
    """Where exclusion paths are relative to: the loader's ``root`` option, else the images' common folder."""
    root = getattr(options, "root", None)
    if isinstance(root, (str, Path)) and str(root):
        return Path(os.path.abspath(Path(root).expanduser()))
    paths = [os.path.abspath(s.path) for split in dataset.splits.values() for s in split]
    return Path(os.path.commonpath(paths)) if paths else Path.cwd()


def relative(path: Path | str, root: Path) -> str:
    """``path`` relative to ``root`` (lexically, links kept), with ``/`` separators; unchanged when outside it."""
    absolute = os.path.normpath(os.path.abspath(path))
    try:
        return Path(os.path.relpath(absolute, root)).as_posix() if _inside(absolute, root) else str(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def _inside(absolute: str, root: Path) -> bool:
    base = os.path.normpath(os.path.abspath(root))
    return absolute == base or absolute.startswith(base.rstrip(os.sep) + os.sep)


def read_exclusions(file: Path, root: Path) -> list[str]:
    """The paths listed in ``file`` (relative to ``root``, normalised); every problem is one line naming the file."""
    try:
        data = read_regular(file, MAX_EXCLUDE_BYTES)
    except FileNotFoundError:
        raise DataError(f"dataset.exclude: {file} does not exist; write one with tlkit audit RECIPE --write-exclusions {file}") from None
    except UnsafeFile as exc:
        raise DataError(f"dataset.exclude: {file} {exc}") from None
    except OSError as exc:
        raise DataError(f"dataset.exclude: {file} cannot be read ({exc.strerror or exc})") from None
    if b"\x00" in data:
        raise DataError(f"dataset.exclude: {file} is binary (a NUL byte at {data.index(0)}); it must be text, one path per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"dataset.exclude: {file} is not UTF-8 text (byte {exc.start})") from None
    paths = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        absolute = os.path.normpath(os.path.join(root, entry))
        if not _inside(absolute, root) or absolute == os.path.normpath(root):
            raise DataError(f"dataset.exclude: {file} line {number}: '{entry[:200]}' is outside the data root {root}; list paths relative to it")
        paths.append(Path(os.path.relpath(absolute, root)).as_posix())
    return paths


@dataclass(frozen=True)
class Excluded:
    """What ``dataset.exclude`` left out: (split, path relative to the root, label) per image, and listed paths not found."""

    file: Path
    removed: tuple[tuple[str, str, int], ...]
    unmatched: tuple[str, ...]

    def notes(self) -> list[str]:
        lines = [f"exclude: left out {len(self.removed)} image{'s' if len(self.removed) != 1 else ''} listed in {self.file} (excluded.csv)"]
        if self.unmatched:
            lines.append(f"exclude: {len(self.unmatched)} path(s) in {self.file} are not in the data set (first: {self.unmatched[0]})")
        return lines


def apply_exclusions(dataset: LoadedDataset, file: Path, root: Path) -> tuple[LoadedDataset, Excluded]:
    """``dataset`` without the images ``file`` lists (matched by path relative to ``root``), and what was removed."""
    wanted = set(read_exclusions(file, root))
    splits: dict[str, Sequence[Sample]] = {}
    removed: list[tuple[str, str, int]] = []
    for split, samples in dataset.splits.items():
        kept = []
        for sample in samples:
            name = relative(sample.path, root)
            if name in wanted:
                removed.append((split, name, sample.label))
            else:
                kept.append(sample)
        splits[split] = tuple(kept)
    found = {name for _, name, _ in removed}
    excluded = Excluded(file=file, removed=tuple(removed), unmatched=tuple(sorted(wanted - found)))
    return dataclasses.replace(dataset, splits=splits), excluded


def excluded_paths(findings: Iterable[Finding], kinds: Sequence[str] = DEFAULT_KINDS) -> list[tuple[str, Finding]]:
    """Which file each finding of ``kinds`` leaves out: the flagged image; for a pair the second (for a leak, the train copy)."""
    chosen: dict[str, Finding] = {}
    for finding in findings:
        if finding.kind not in kinds or not finding.paths or not finding.paths[0]:
            continue
        path = finding.paths[0] if finding.kind == "leak" or len(finding.paths) == 1 else finding.paths[1]
        chosen.setdefault(path, finding)
    return sorted(chosen.items())


def write_exclusions(file: Path, findings: Iterable[Finding], kinds: Sequence[str] = DEFAULT_KINDS) -> int:
    """Write the exclusions file (atomically); returns how many paths it lists."""
    entries = excluded_paths(findings, kinds)
    lines = [
        "# tlkit exclusions: one image path per line, relative to the data root; '#' lines are comments.",
        f"# Use it with dataset.exclude in a recipe (kinds: {', '.join(kinds)}).",
    ]
    for path, finding in entries:
        reason = finding.detail.replace("\n", " ")[:200]
        lines += [f"# {finding.kind} {finding.score:.3g}: {reason}", path]
    try:
        write_atomic(file, ("\n".join(lines) + "\n").encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"--write-exclusions: cannot write {file} ({exc.strerror or exc}); choose another file") from None
    return len(entries)
