"""SIGTERM treated like Ctrl-C while training, so ``kill PID`` (or a scheduler's time limit) stops at a clean point.

Python turns SIGINT into :class:`KeyboardInterrupt` by itself; SIGTERM would end the process without
running any ``finally``. During training both raise :class:`KeyboardInterrupt`, the trainer reports
which checkpoint is kept, and the previous handler is put back afterwards. Checkpoints are written
atomically, so an interrupt during a write keeps the previous one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any


class TrainingStopped(KeyboardInterrupt):
    """Training was interrupted; ``epoch`` epochs are saved in ``checkpoints`` (0: no checkpoint yet)."""

    def __init__(self, epoch: int, total: int, checkpoints: Path, signal_name: str = "Ctrl-C") -> None:
        super().__init__(f"{signal_name} in epoch {epoch + 1} of {total}")
        self.epoch = epoch
        self.total = total
        self.checkpoints = checkpoints
        self.signal_name = signal_name


@contextmanager
def sigterm_as_interrupt() -> Iterator[dict[str, str]]:
    """While active, SIGTERM raises :class:`KeyboardInterrupt`; yields a dict whose ``"signal"`` names the last one."""
    seen = {"signal": "Ctrl-C"}
    if threading.current_thread() is not threading.main_thread():
        yield seen  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> Any:
        seen["signal"] = "SIGTERM"
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)
