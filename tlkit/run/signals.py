"""SIGTERM handled like Ctrl-C, so ``timeout``, docker and schedulers stop a run as cleanly as a person.

Without a handler SIGTERM kills the process on the spot: the batch in flight is lost, the staging
folder stays behind and nothing is said. Inside :func:`terminate_as_interrupt` it raises
:class:`Terminated` (a ``KeyboardInterrupt``) in the main thread instead, so every cleanup path that
Ctrl-C takes runs: the feature cache saves what it holds, the DataLoader workers stop, the staging
folder is removed, and the CLI prints one line and exits with 143 (128 + SIGTERM), what a shell
reports for a terminated process.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

EXIT_CODE = 128 + int(signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; carries the exit code the CLI should end with."""

    exit_code = EXIT_CODE


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _quiet_sharer(previous: Callable[..., Any]) -> Callable[..., Any]:
    """A ``sys.excepthook`` that drops one known, harmless report of a stopped extraction.

    DataLoader workers hand tensors over through ``multiprocessing.resource_sharer``, whose
    background thread reports its errors through ``sys.excepthook``; when the workers are stopped
    mid hand-over (an interrupt) it sees the connection reset and would print a traceback after
    tlkit's one line. Nothing is lost: the batch it carried was being abandoned anyway.
    """

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> Any:
        frames = traceback.extract_tb(tb) if tb else []
        if isinstance(value, (ConnectionError, EOFError)) and any(f.filename.endswith("resource_sharer.py") for f in frames):
            return None
        return previous(kind, value, tb)

    hook._tlkit_quiet = True  # type: ignore[attr-defined]
    return hook


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (only in the main thread, where handlers can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    if not getattr(sys.excepthook, "_tlkit_quiet", False):
        sys.excepthook = _quiet_sharer(sys.excepthook)  # left installed: the thread may report after the run ended
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
