"""When the command started: the summary's ``time`` is the wall time of the whole command.

A run's stages are timed one by one, but a rerun spends most of its time before the first of them
(starting Python, importing torch, loading plugins) and after the last (writing the run
directory). The figure a person compares with their stopwatch is from the process's start, which
Linux records (``/proc/self/stat``: start time in clock ticks after boot, read against the boot-time
clock); elsewhere the CLI's first line is the start. A run called from Python counts from
:func:`tlkit.run.engine.run`'s own start instead (a notebook's process started long before).
"""

from __future__ import annotations

import os
import time

_started: float | None = None


def process_start_time() -> float | None:
    """This process's start as a Unix time, from ``/proc`` (``None`` where there is none).

    ``/proc/self/stat`` gives the start in clock ticks after boot, on the boot-time clock; its age is
    read against ``CLOCK_BOOTTIME`` now (10 ms ticks). ``/proc/stat``'s ``btime`` is whole seconds, so a
    start computed from it could read up to a second early.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted after the ")" that ends the command name
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # AttributeError: no CLOCK_BOOTTIME (not Linux)
        return None
    return time.time() - age if 0 <= age < 86400 * 365 else None  # a clock that disagrees: not trusted


def mark_command_start(*, process: bool = True) -> None:
    """The CLI calls this first thing: the command's time counts from the process's start (``process``), or from now."""
    global _started
    _started = (process_start_time() if process else None) or time.time()


def command_started(default: float) -> float:
    """When the command started (:func:`mark_command_start`), else ``default`` (a run called from Python)."""
    return _started if _started is not None else default


def elapsed() -> float | None:
    """Seconds since the command started, or ``None`` when no command marked its start."""
    return None if _started is None else max(0.0, time.time() - _started)


def reset() -> None:
    """Forget the mark (tests calling the CLI in-process, then the engine directly)."""
    global _started
    _started = None
