"""How the engine tells the outside world what it is doing, without printing anything itself.

The engine calls an :class:`Observer`; the CLI passes one that draws rich progress bars, tests and
library users pass nothing (the silent default) or their own. Tracking tools (MLflow, W&B, ...) are
observers too: a plugin registers an :class:`ObserverSpec` (hook ``register_observers``), a recipe
names it under ``observers:``, and the engine hands every event to it beside the CLI's own.

The events of a run, in order: :meth:`~Observer.start` (the recipe as flat params), then any number
of :meth:`~Observer.stage`, :meth:`~Observer.note`, :meth:`~Observer.task` and :meth:`~Observer.point`
(one per epoch), then :meth:`~Observer.metrics` (the final figures) and :meth:`~Observer.artifacts`
(the committed run directory) when the run completes, and always :meth:`~Observer.end` last.
Every method has a do-nothing default, so an observer overrides only what it shows, and methods
added later never break one written before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeAlias, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RunStatus: TypeAlias = Literal["ok", "failed", "interrupted"]
ParamValue: TypeAlias = "str | int | float | bool | None"


class Observer:
    """Silent by default; override what you want to show."""

    def start(self, name: str, params: Mapping[str, ParamValue]) -> None:
        """The run begins: the recipe's ``name`` and its resolved settings as flat params (``head.lr``)."""

    def note(self, text: str) -> None:
        """A line worth showing (what was loaded, what was skipped)."""

    def stage(self, text: str) -> None:
        """The run is now ``text`` (e.g. "extracting the train features"): named if it is interrupted."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        """Long work: yields ``advance(n)`` to call as units complete."""
        yield lambda n: None

    def point(self, label: str, values: Mapping[str, float]) -> None:
        """One point of a training curve (e.g. every ``eval_every`` epochs); ``values["epoch"]`` is its step."""

    def metrics(self, values: Mapping[str, float]) -> None:
        """The finished run's figures, flat (``test.accuracy``, ``time.total_s``), before :meth:`artifacts`."""

    def artifacts(self, run_dir: Path) -> None:
        """The run directory, complete and committed: every file a tracking tool may copy."""

    def end(self, status: RunStatus) -> None:
        """The run is over: ``"ok"``, ``"failed"`` (an error) or ``"interrupted"`` (Ctrl-C, SIGTERM). Always the last call."""


OptionsT = TypeVar("OptionsT", bound="DataclassInstance")


@dataclass(frozen=True)
class NoObserverOptions:
    """An observer that takes no options."""


@dataclass(frozen=True)
class ObserverSpec(Generic[OptionsT]):
    """A registered run observer: a recipe's ``observers: {NAME: {options}}`` turns it on for that run.

    ``build(options)`` returns the :class:`Observer` for one run; it is called when the run starts,
    after the recipe was validated and before any image is read, so a missing library is one
    :class:`~tlkit.errors.RecipeError` then (``pip install ...``), not a failure later. Anything an
    observer raises once the run is under way is reported as one warning and that observer is left
    out of the rest of the run: the run itself always goes on.
    """

    name: str
    build: Callable[[OptionsT], Observer]
    description: str = ""
    options: type[OptionsT] = NoObserverOptions  # type: ignore[assignment]
    plugin: str = ""
