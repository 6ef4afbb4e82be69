"""Progress for Python callers: silent by default, tqdm bars on request (widgets in Jupyter, text elsewhere).

The engine reports through :class:`~tlkit.contract.observer.Observer`; ``tlkit.fit(progress=True)``
passes :class:`NotebookObserver`, which draws each long task with ``tqdm.auto`` (a notebook widget
where ipywidgets is installed, a text bar on stderr otherwise) and shows notes through ``tqdm.write``
so they do not tear a bar. Nothing is printed unless progress is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

from tlkit.contract.observer import Observer


class NotebookObserver(Observer):
    """Bars and notes for a notebook or a script; ``file`` defaults to stderr, as tqdm's do."""

    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = file

    def note(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.file or sys.stderr)  # tqdm.write's own default is stdout

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=description, unit=unit, file=self.file, leave=True, dynamic_ncols=True) as bar:
            yield bar.update


def observer_for(progress: bool | Observer) -> Observer:
    """``True``: bars (:class:`NotebookObserver`); ``False``: silent; an :class:`Observer`: that one."""
    if isinstance(progress, Observer):
        return progress
    return NotebookObserver() if progress else Observer()
