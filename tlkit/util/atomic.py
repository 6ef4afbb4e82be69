"""Writing a file or a folder so that it is either complete or absent: tlkit's atomic-write helpers.

The data goes to a dot-named temporary file beside the target (same folder, so the same file
system), is flushed to disk (a full disk may only say so then), and is renamed over the target with
``os.replace``, which is atomic on POSIX and Windows. Files are created with ``open``, so they honour
the umask (a shared cache stays readable by the team). A process killed at any moment leaves the old
file or the new one, never half of one; a stray temporary file starts with ``.tmp-`` so readers
that list a folder skip it. Errors are left as ``OSError`` for the caller to name in its own terms.

A folder (a run directory, an unpacked data set, a converted model) is written in full under a
temporary name beside its final place and published by :func:`publish_folder`, one rename.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def temporary_name(target: Path) -> Path:
    """A unique dot-named sibling of ``target`` (two writers never share one)."""
    return target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{target.name}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write in any way (a library's ``save(path)``); on success it replaces ``target``."""
    tmp = temporary_name(Path(target))
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically; returns ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def publish_folder(staging: Path, final: Path, *, keep_existing: bool = False) -> bool:
    """Move the completely written folder ``staging`` to ``final`` by renaming it (same file system); True when it got there.

    A reader sees the previous folder or the new one, never a mix. When ``final`` does not exist
    (or is an empty folder, such as a name claimed with ``os.mkdir``) this is a single
    ``os.replace``. An existing non-empty ``final`` is moved aside to a dot-named sibling first and
    deleted once the new folder is in place (put back if that rename fails); with
    ``keep_existing`` it is left as it is and ``False`` returned instead, ``staging`` untouched:
    another process published the same content first (a data set two runs fetched at once).
    """
    staging, final = Path(staging), Path(final)
    try:
        os.replace(staging, final)
        return True
    except OSError:
        if not final.is_dir() or not staging.is_dir():
            raise  # not "the place is taken by a folder": a permission, a file in the way, a missing staging folder
        if keep_existing:
            return False
    aside = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(final, aside)
    try:
        os.replace(staging, final)
    except OSError:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` must set one to read it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
