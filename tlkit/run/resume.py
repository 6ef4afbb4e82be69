"""``--resume RUN_DIR_OR_PARTIAL``: find the interrupted fine-tuning run to continue.

A fine-tuning run keeps its checkpoints in its staging folder (``<out>.partial-*/checkpoints/``),
which an interrupt or a kill leaves in place. ``--resume`` takes that folder itself or the ``--out``
path the run was heading for; with the latter, the most recently checkpointed staging folder beside
it is continued, and the run is committed to that ``--out`` when it completes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import RunError
from tlkit.finetune.checkpoint import STATE_FILE
from tlkit.saved.run_directory import MARKER

PARTIAL = ".partial-"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class ResumePoint:
    """The staging folder to continue in and the run directory it becomes when complete."""

    partial: Path
    final: Path


def _has_checkpoint(folder: Path) -> bool:
    return (folder / CHECKPOINTS / STATE_FILE).is_file()


def find_resume_point(path: Path) -> ResumePoint:
    """The interrupted run at ``path`` (a ``.partial-*`` folder or the ``--out`` it was heading for)."""
    path = Path(path)
    if PARTIAL in path.name and path.is_dir():
        if not _has_checkpoint(path):
            raise RunError(f"{path} holds no fine-tuning checkpoint ({CHECKPOINTS}/{STATE_FILE}); start the run again without --resume")
        return ResumePoint(path, path.with_name(path.name.split(PARTIAL)[0]))
    if (path / MARKER).is_file() and not _has_checkpoint(path):
        raise RunError(f"{path} is a finished run; there is nothing to resume (run without --resume to train again)")
    candidates = [p for p in path.parent.glob(f"{path.name}{PARTIAL}*") if p.is_dir() and _has_checkpoint(p)] if path.parent.is_dir() else []
    if not candidates:
        raise RunError(f"no interrupted fine-tuning run at {path} (no checkpoint in {path.name}{PARTIAL}*); give the --out or .partial-* folder of the run")
    newest = max(candidates, key=lambda p: (p / CHECKPOINTS / STATE_FILE).stat().st_mtime)
    return ResumePoint(newest, path)


@contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the staging folder ``folder`` while a fine-tuning run trains in it.

    ``flock`` on the folder itself (no lock file that would end up in the run directory); the kernel
    drops it when the process ends, however it ends. A second ``--resume`` of the same folder, while
    the first still trains, is refused in one line instead of training over the same checkpoints.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise RunError(f"cannot open {folder} to lock it ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{folder} is in use by another tlkit run (it holds the folder's lock); wait for it to end, or stop it, then --resume") from None
        yield
    finally:
        os.close(fd)
