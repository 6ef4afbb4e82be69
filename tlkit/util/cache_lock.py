"""Runs mark the cache they use, so ``tlkit cache clear`` does not pull it from under them.

A run holds, for its duration, a lock file under ``<cache>/locks/`` named after its pid, with an
exclusive ``flock`` on it. The file is locked before it gets its visible name, so a visible lock
file that can be locked by someone else belongs to a process that is gone (``kill -9``, power loss):
the kernel releases a dead process's locks, so a stale file is recognised and removed, never
trusted by its pid alone. Many runs share a cache at once (each holds its own file); only clearing
refuses while any is held. Where locks are not available (a read-only cache, a platform without
``fcntl``) a run takes none: there is nothing a clear could remove under it, or nothing to check.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCKS_DIR = "locks"
_PREFIX = "run-"


def _take(path: Path) -> IO[str] | None:
    """``path`` created and locked, under a temporary name first; ``None`` when the cache cannot be written."""
    if fcntl is None:
        return None
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(tmp, "w")  # noqa: SIM115 - held open for the run's duration
    except OSError:
        return None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        os.replace(tmp, path)
    except OSError:
        fh.close()
        tmp.unlink(missing_ok=True)
        return None
    return fh


@contextlib.contextmanager
def held(root: Path) -> Iterator[None]:
    """The cache under ``root`` is marked in use by this process for the block (a run)."""
    path = root / LOCKS_DIR / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    fh = _take(path)
    try:
        yield
    finally:
        if fh is not None:
            path.unlink(missing_ok=True)
            fh.close()


def holders(root: Path, *, remove_stale: bool = True) -> list[int]:
    """The pids of the runs holding the cache under ``root`` now; stale lock files (their process gone) are removed."""
    if fcntl is None:
        return []
    try:
        files = sorted((root / LOCKS_DIR).glob(f"*{_PREFIX}*.lock"))  # with the .tmp- names of runs starting (or killed starting)
    except OSError:
        return []
    pids = []
    for path in files:
        try:
            with open(path) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    text = fh.read(32).strip()
                    pids.append(int(text) if text.isdigit() else 0)
                    continue
            if remove_stale:
                path.unlink(missing_ok=True)  # locked by no one: its run is gone
        except OSError:
            continue
    return pids
