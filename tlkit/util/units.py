"""Small conversions shared by modules that must stay light (no torch): sizes for people, numbers from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping


def human_bytes(size: float, units: tuple[str, ...] = ("B", "KB", "MB", "GB")) -> str:
    """``1536`` -> ``"1.5 KB"`` (steps of 1024; the last unit takes everything above)."""
    for unit in units:
        if size < 1024 or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == units[0] else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} {units[-1]}"


def positive_number(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """``$name`` as a number > 0, ``default`` when unset; ``ValueError`` (saying why) otherwise."""
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


def tracing_plugins(environ: Mapping[str, str] | None = None) -> bool:
    """``TLKIT_TRACE_PLUGINS`` is on: plugin loading is to be watched, so never skipped (nor answered from the listing index)."""
    return (os.environ if environ is None else environ).get("TLKIT_TRACE_PLUGINS", "") not in ("", "0")
