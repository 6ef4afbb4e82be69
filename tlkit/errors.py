"""One error hierarchy, so the CLI can turn any expected failure into one line and exit code 2.

Anything that is the user's to fix (a recipe, a path, a missing weights file, a plugin) raises a
subclass of :class:`TlkitError`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DataError",
    "DeviceError",
    "ExportError",
    "OutputError",
    "RecipeError",
    "RegistryError",
    "RunError",
    "RunInterrupted",
    "TlkitError",
    "WeightsError",
    "did_you_mean",
    "one_line",
]


def one_line(text: str) -> str:
    """``text`` with control characters (newlines, tabs, NUL) shown as escapes, so it stays one line.

    Messages quote user input (keys, values, file names), which may hold anything.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TlkitError(Exception):
    """An error the user can act on; its message is one line that says what to do."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


class RecipeError(TlkitError):
    """A recipe (or a ``--set`` override) is malformed; the message names the key path."""


class RegistryError(TlkitError):
    """An unknown or duplicated backbone, data set or head name."""


class WeightsError(TlkitError):
    """Weights are missing, unsafe, truncated or for another architecture; names the file."""


class DataError(TlkitError):
    """A data set is missing or malformed; names the path."""


class OutputError(TlkitError):
    """The run directory or cache cannot be written."""


class RunError(TlkitError):
    """A saved run directory is missing, unfinished, or cannot be rebuilt into a model."""


class DeviceError(TlkitError):
    """The device asked for (``cuda``) is not there; says which setting to change."""


class ExportError(TlkitError):
    """An export could not be written, or does not reproduce the model's probabilities."""


def did_you_mean(name: str, candidates: Iterable[str], *, n: int = 3) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest candidates, or ``""`` if none is close.

    Matching ignores a ``family:`` prefix on either side, so ``resnet81`` finds ``resnet18`` and
    ``timm:resnet18``.
    """
    pool = list(candidates)
    matches = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    if not matches:
        bare = {c.split(":", 1)[-1]: c for c in pool}
        matches = [bare[m] for m in difflib.get_close_matches(name.split(":", 1)[-1], list(bare), n=n, cutoff=0.6)]
    if not matches:
        return ""
    quoted = " or ".join(f"'{m}'" for m in matches)
    return f"; did you mean {quoted}?"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says at which stage and what was kept.

    A ``KeyboardInterrupt`` (not a :class:`TlkitError`) so that code which catches interrupts still
    does, and the CLI still exits with 130.
    """
