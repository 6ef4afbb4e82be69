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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_CODE = 128 + int(signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; carries the exit code the CLI should end with."""

    exit_code = EXIT_CODE


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (only in the main thread, where handlers can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
