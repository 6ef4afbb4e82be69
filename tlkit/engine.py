"""``run(recipe)``: the stages of :mod:`tlkit.stages` composed into one run with a run directory.

prepare -> extract -> fit -> evaluate -> write. Everything that can fail because of the user's input
fails before the long work starts: the recipe is validated when it is read, the output folder is
checked when :class:`~tlkit.artifacts.RunDirectory` is created and the backbone's weights are
resolved in ``prepare``, all before any image is decoded.

A run ends in one of three ways: complete (the run directory renamed into place, ``run.json`` last),
a :class:`~tlkit.errors.TlkitError` (nothing left behind but a one-line reason), or Ctrl-C, which
stops the DataLoader workers, removes the unfinished staging folder and raises
:class:`~tlkit.errors.RunInterrupted` saying at which stage it stopped and what was kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tlkit import __version__, stages
from tlkit.artifacts import RunDirectory, default_out_dir
from tlkit.errors import RunInterrupted
from tlkit.evaluate import RunMetrics
from tlkit.observer import Observer
from tlkit.recipe import Recipe
from tlkit.run_files import write
from tlkit.stages import BadFile, seed_everything

__all__ = ["RunResult", "run", "seed_everything"]


@dataclass(frozen=True)
class RunResult:
    """Where a finished run went, its metrics, and the files it skipped."""

    out_dir: Path
    metrics: RunMetrics
    bad_images: tuple[BadFile, ...] = ()


class _Progress(Observer):
    """Passes everything on to the caller's observer, remembering the stage (for an interrupt) and timings."""

    def __init__(self, observer: Observer) -> None:
        self.inner = observer
        self.current = "building the backbone"
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()

    def note(self, text: str) -> None:
        self.inner.note(text)

    def stage(self, text: str) -> None:
        self.current = text
        self.inner.stage(text)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        with self.inner.task(description, total, unit) as advance:
            yield advance

    def point(self, label: str, values: Mapping[str, float]) -> None:
        self.inner.point(label, values)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - start


def run(recipe: Recipe, out_dir: Path | None = None, observer: Observer | None = None) -> RunResult:
    """Extract features, train the head, evaluate, and write the run directory; returns where and what."""
    progress = _Progress(observer or Observer())
    run_dir = RunDirectory(out_dir or default_out_dir(recipe.name), unique=out_dir is None)
    try:
        with progress.timed("prepare"):
            prepared = stages.prepare(recipe, progress)
        with progress.timed("extract"):
            features = stages.extract(prepared, progress)
        with progress.timed("train_head"):
            trained = stages.fit(prepared, features, progress)
        progress.timings["total"] = time.perf_counter() - progress.started
        evaluation = stages.evaluate(prepared, features, trained, progress.timings)
        progress.stage("writing the run directory")
        write(run_dir, prepared, features, trained, evaluation)
        final = run_dir.commit({"tlkit": __version__, "recipe": recipe.name, "complete": True})
        return RunResult(out_dir=final, metrics=evaluation.metrics, bad_images=features.bad)
    except KeyboardInterrupt:
        run_dir.discard()
        raise _interrupted(progress.current, run_dir, cached=recipe.extract.cache) from None
    except BaseException:
        run_dir.discard()
        raise


def _interrupted(stage: str, run_dir: RunDirectory, *, cached: bool) -> RunInterrupted:
    # The staging folder only ever holds a finished run's files, so there is nothing partial worth keeping.
    # Extraction writes its features to the cache as it goes (and on the way out), so a rerun resumes there.
    kept = "; the feature cache keeps every feature extracted so far, and a rerun starts from them" if cached else ""
    return RunInterrupted(f"interrupted while {stage}; nothing was written to {run_dir.final} (a run directory appears only when complete){kept}")
