"""Small conversions shared by modules that must stay light (no torch): sizes for people, numbers from the environment."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping


def human_bytes(size: float, units: tuple[str, ...] = ("B", "KB", "MB", "GB")) -> str:
    """``1536`` -> ``"1.5 KB"`` (steps of 1024; the last unit takes everything above)."""
    for unit in units:
        if size < 1024 or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == units[0] else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {units[-1]}"


#: A wait with "no limit" still needs a number where a library takes one (torch's process group): a year.
LONGEST_WAIT_S = 365 * 24 * 3600.0


def positive_number(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """``$name`` as a number > 0, ``default`` when unset; ``ValueError`` (saying why) otherwise.

    ``inf`` (any spelling Python reads: ``inf``, ``Infinity``) is accepted and means "no limit"; every
    reader of a limit handles it (:func:`finite_or_none`, :func:`bounded_wait`). ``nan`` is refused.
    """
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{name}={raw!r} must be greater than 0")
    return value


def finite_or_none(limit: float) -> float | None:
    """``limit``, or ``None`` ("wait without a timeout", as ``socket`` and ``queue`` take it) when it is ``inf``."""
    return limit if math.isfinite(limit) else None


def bounded_wait(seconds: float) -> float:
    """``seconds`` for an API that needs a finite number: ``inf`` ("no limit") becomes :data:`LONGEST_WAIT_S`."""
    return min(seconds, LONGEST_WAIT_S)


def tracing_plugins(environ: Mapping[str, str] | None = None) -> bool:
    """``TLKIT_TRACE_PLUGINS`` is on: plugin loading is to be watched, so never skipped (nor answered from the listing index)."""
    return (os.environ if environ is None else environ).get("TLKIT_TRACE_PLUGINS", "") not in ("", "0")
