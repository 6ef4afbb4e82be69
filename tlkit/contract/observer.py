"""How the engine tells the outside world what it is doing, without printing anything itself.

The engine calls an :class:`Observer`; the CLI passes one that draws rich progress bars, tests and
library users pass nothing (the silent default) or their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


class Observer:
    """Silent by default; override what you want to show."""

    def note(self, text: str) -> None:
        """A line worth showing (what was loaded, what was skipped)."""

    def stage(self, text: str) -> None:
        """The run is now ``text`` (e.g. "extracting the train features"): named if it is interrupted."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        """Long work: yields ``advance(n)`` to call as units complete."""
        yield lambda n: None

    def point(self, label: str, values: Mapping[str, float]) -> None:
        """One point of a training curve (e.g. every ``eval_every`` epochs)."""
