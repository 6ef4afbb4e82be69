"""SIGTERM handled like Ctrl-C, so ``timeout``, docker and schedulers stop a run as cleanly as a person.

Without a handler SIGTERM kills the process on the spot: the batch in flight is lost, the staging
folder stays behind and nothing is said. Inside :func:`terminate_as_interrupt` it raises
:class:`Terminated` (a ``KeyboardInterrupt``) in the main thread instead, so every cleanup path that
Ctrl-C takes runs: the feature cache saves what it holds, the DataLoader workers stop, the staging
folder is removed, and the CLI prints one line and exits with 143 (128 + SIGTERM), what a shell
reports for a terminated process.

A SIGTERM sent to the whole process group (torchrun's ``os.killpg``, ``kill -TERM -PGID``, a container
stop) kills the DataLoader's decoding workers too, and torch's SIGCHLD handler reports each death as
``RuntimeError: DataLoader worker ... killed by signal: Terminated``, raised in whatever Python code runs
when the report arrives: on a loaded machine, the very cleanup the SIGTERM started, replacing its
one-line exit with a traceback (issue 17). :func:`sigterm_raises` therefore stops those reports once
the SIGTERM is handled: the workers are being stopped, which is what the signal asked for.
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
    if not getattr(sys.excepthook, "_tlkit_quiet", False):
        sys.excepthook = _quiet_sharer(sys.excepthook)  # left installed: the thread may report after the run ended
    with sigterm_raises(Terminated):
        yield


def _ignore_child(signum: int, frame: FrameType | None) -> None:
    """A Python-level no-op, not SIG_DFL: a SIGCHLD already pending would otherwise be reported as a "race condition"."""


@contextmanager
def sigterm_raises(stop: Callable[[], BaseException]) -> Iterator[None]:
    """Within the block SIGTERM raises ``stop()``, and from then on the death of child processes is not reported.

    The DataLoader's SIGCHLD handler (installed when its first workers start) is set aside when the
    SIGTERM arrives and put back when the block ends; by then the workers are shut down, so it has
    nothing left to report. The main thread only (signal handlers cannot be set elsewhere).
    """
    stopping: list[Any] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(signal.getsignal(signal.SIGCHLD))
            if callable(stopping[0]):  # a DataLoader's (the default needs no quieting)
                signal.signal(signal.SIGCHLD, _ignore_child)
        raise stop()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stopping and callable(stopping[0]):
            signal.signal(signal.SIGCHLD, stopping[0])
