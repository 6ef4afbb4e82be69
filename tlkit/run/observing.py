"""The run's observers together: the caller's (the CLI's progress bars) and those the recipe turned on.

A recipe's ``observers:`` section names plugins' run observers (tracking tools such as MLflow);
:func:`observers_for` builds them when the run starts and :class:`FanOut` hands every event to each,
after the caller's own. A plugin's observer is wrapped in :class:`Guarded`: whatever it raises once the
run is under way becomes one warning naming it, and it sees nothing more of that run, so a tracking
server that goes away (or a bug in a plugin) never fails, stops or alters a run. Building one is
different: a missing library or a bad setting there is the user's to fix, and is a one-line error
before any image is read.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tlkit.contract.observer import Observer, ParamValue, RunStatus
from tlkit.contract.plugin_manager import PluginWarning
from tlkit.errors import TlkitError
from tlkit.outputs.metrics import RunMetrics
from tlkit.recipe.loader import Recipe


class ObserverWarning(PluginWarning):
    """A plugin's run observer failed; the run goes on without it (the CLI shows it as one ``warning:`` line)."""


def _describe(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}" if not isinstance(exc, TlkitError) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Guarded(Observer):
    """One plugin's observer, whose failures are reported once and never reach the run."""

    def __init__(self, name: str, inner: Observer) -> None:
        self.name = name
        self.inner = inner
        self.failed = False

    def _call(self, event: str, call: Callable[[], object]) -> None:
        if self.failed:
            return
        try:
            call()
        except (Exception, SystemExit) as exc:  # a plugin's bug, a lost tracking server, a stray sys.exit: reported, never raised into the run
            self._fail(event, exc)

    def _fail(self, event: str, exc: BaseException) -> None:
        self.failed = True
        warnings.warn(f"observer '{self.name}' failed at {event} ({_describe(exc)}); the run goes on without it", ObserverWarning, stacklevel=2)

    def start(self, name: str, params: Mapping[str, ParamValue]) -> None:
        self._call("start", lambda: self.inner.start(name, params))

    def note(self, text: str) -> None:
        self._call("note", lambda: self.inner.note(text))

    def stage(self, text: str) -> None:
        self._call("stage", lambda: self.inner.stage(text))

    def point(self, label: str, values: Mapping[str, float]) -> None:
        self._call("point", lambda: self.inner.point(label, dict(values)))

    def metrics(self, values: Mapping[str, float]) -> None:
        self._call("metrics", lambda: self.inner.metrics(dict(values)))

    def artifacts(self, run_dir: Path) -> None:
        self._call("artifacts", lambda: self.inner.artifacts(run_dir))

    def end(self, status: RunStatus) -> None:
        self._call("end", lambda: self.inner.end(status))

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        entered: Any = None
        if not self.failed:
            try:
                entered = self.inner.task(description, total, unit)
                advance = entered.__enter__()
            except (Exception, SystemExit) as exc:
                self._fail("task", exc)
                entered = None
        if entered is None:
            yield lambda n: None
            return

        def guarded(n: int) -> None:
            self._call("task", lambda: advance(n))

        try:
            yield guarded
        except BaseException as exc:  # the run's own exception goes on unchanged, whatever the observer's exit says
            self._exit(entered, exc)
            raise
        self._exit(entered, None)

    def _exit(self, entered: Any, exc: BaseException | None) -> None:
        if self.failed:
            return
        try:
            entered.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
        except (Exception, SystemExit) as error:
            if error is not exc:
                self._fail("task", error)


class FanOut(Observer):
    """Every event to each observer in turn (the caller's first)."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def start(self, name: str, params: Mapping[str, ParamValue]) -> None:
        for o in self.observers:
            o.start(name, params)

    def note(self, text: str) -> None:
        for o in self.observers:
            o.note(text)

    def stage(self, text: str) -> None:
        for o in self.observers:
            o.stage(text)

    def point(self, label: str, values: Mapping[str, float]) -> None:
        for o in self.observers:
            o.point(label, values)

    def metrics(self, values: Mapping[str, float]) -> None:
        for o in self.observers:
            o.metrics(values)

    def artifacts(self, run_dir: Path) -> None:
        for o in self.observers:
            o.artifacts(run_dir)

    def end(self, status: RunStatus) -> None:
        for o in self.observers:
            o.end(status)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        with ExitStack() as stack:
            advances = [stack.enter_context(o.task(description, total, unit)) for o in self.observers]

            def advance(n: int) -> None:
                for a in advances:
                    a(n)

            yield advance


def observers_for(recipe: Recipe, observer: Observer | None) -> Observer:
    """The caller's ``observer`` (silent if None) followed by each observer the recipe turned on, built now."""
    built = [Guarded(choice.name, choice.spec.build(choice.options)) for choice in recipe.observers]
    own = observer or Observer()
    return FanOut([own, *built]) if built else own


def flat_params(recipe: Recipe) -> dict[str, ParamValue]:
    """The resolved recipe as flat ``section.key`` params (``head.lr``), lists as JSON; the ``observers`` section left out."""
    flat: dict[str, ParamValue] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif value is None or isinstance(value, (str, int, float, bool)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value, default=str)

    walk("", {k: v for k, v in recipe.to_dict().items() if k != "observers"})
    return flat


def final_metrics(metrics: RunMetrics) -> dict[str, float]:
    """The figures an observer gets when the run completes, named as in ``metrics.json`` (times as ``time_<stage>_s``)."""
    values: dict[str, float | None] = {
        "test_accuracy": metrics.test_accuracy,
        "train_accuracy": metrics.train_accuracy,
        "test_balanced_accuracy": metrics.test_balanced_accuracy,
        "test_errors": metrics.test_errors,
        "skipped_images": metrics.skipped_images,
        "train_images": metrics.counts.get("train"),
        "test_images": metrics.counts.get("test"),
        **{f"time_{stage}_s": seconds for stage, seconds in metrics.timings_s.items()},
    }
    return {key: float(value) for key, value in values.items() if value is not None}
