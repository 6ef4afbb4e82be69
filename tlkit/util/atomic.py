"""Writing a file so that it is either complete or absent: tlkit's one atomic-write helper.

The data goes to a dot-named temporary file beside the target (same folder, so the same file
system), is flushed to disk (a full disk may only say so then), and is renamed over the target with
``os.replace``, which is atomic on POSIX and Windows. Files are created with ``open``, so they honour
the umask (a shared cache stays readable by the team). A process killed at any moment leaves the old
file or the new one, never half of one; a stray temporary file starts with ``.tmp-`` so readers
that list a folder skip it. Errors are left as ``OSError`` for the caller to name in its own terms.
"""

from __future__ import annotations

import os
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
