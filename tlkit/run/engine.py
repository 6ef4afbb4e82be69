"""``run(recipe)``: the stages of :mod:`tlkit.run.stages` composed into one run with a run directory.

prepare -> extract -> fit -> evaluate -> write. Everything that can fail because of the user's input
fails before the long work starts: the recipe is validated when it is read, the output folder is
checked when :class:`~tlkit.saved.run_directory.RunDirectory` is created and the backbone's weights are
resolved in ``prepare``, all before any image is decoded.

A run ends in one of three ways: complete (the run directory renamed into place, ``run.json`` last),
a :class:`~tlkit.errors.TlkitError` (nothing left behind but a one-line reason), or Ctrl-C, which
stops the DataLoader workers, removes the unfinished staging folder and raises
:class:`~tlkit.errors.RunInterrupted` saying at which stage it stopped and what was kept.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tlkit import __version__
from tlkit.contract.observer import Observer
from tlkit.contract.specs import TrainedHead
from tlkit.errors import RecipeError, RunInterrupted
from tlkit.finetune.interrupts import TrainingStopped
from tlkit.outputs.metrics import RunMetrics
from tlkit.outputs.predictions import PredictionRow
from tlkit.recipe.loader import Recipe
from tlkit.run import stages
from tlkit.run.resume import CHECKPOINTS
from tlkit.run.signals import EXIT_CODE, Terminated, terminate_as_interrupt
from tlkit.run.stages import BadFile, seed_everything
from tlkit.run.write import write
from tlkit.saved.run_directory import RunDirectory, default_out_dir

__all__ = ["RunResult", "run", "seed_everything"]


@dataclass(frozen=True)
class RunResult:
    """Where a finished run went, its metrics, its test predictions (``predictions.csv``, in memory), and the files it skipped."""

    out_dir: Path
    metrics: RunMetrics
    bad_images: tuple[BadFile, ...] = ()
    predictions: tuple[PredictionRow, ...] = ()


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


def run(recipe: Recipe, out_dir: Path | None = None, observer: Observer | None = None, *, resume: Path | None = None) -> RunResult:
    """Extract features (or fine-tune, ``mode: finetune``), train the head, evaluate, write the run directory.

    ``resume`` (fine-tuning only) continues the interrupted run at that ``--out`` or ``.partial-*`` folder.
    """
    progress = _Progress(observer or Observer())
    run_dir = _run_directory(recipe, out_dir, resume)
    with terminate_as_interrupt():  # SIGTERM (timeout, docker, schedulers) takes Ctrl-C's clean way out
        return _run(recipe, run_dir, progress, resume=resume is not None)


def _run(recipe: Recipe, run_dir: RunDirectory, progress: _Progress, *, resume: bool = False) -> RunResult:
    try:
        with progress.timed("prepare"):
            prepared = stages.prepare(recipe, progress)
        if recipe.finetune is not None:
            with progress.timed("finetune"):
                prepared, trained = _finetune(prepared, run_dir, progress, resume=resume)
        with progress.timed("extract"):
            features = stages.extract(prepared, progress)
        if recipe.finetune is None:
            with progress.timed("train_head"):
                trained = stages.fit(prepared, features, progress)
        progress.timings["total"] = time.perf_counter() - progress.started
        evaluation = stages.evaluate(prepared, features, trained, progress.timings)
        progress.stage("writing the run directory")
        write(run_dir, prepared, features, trained, evaluation)
        shutil.rmtree(run_dir.file(CHECKPOINTS), ignore_errors=True)  # a finished run keeps its trained weights, not its checkpoints
        final = run_dir.commit({"tlkit": __version__, "recipe": recipe.name, "complete": True})
        return RunResult(out_dir=final, metrics=evaluation.metrics, bad_images=features.bad, predictions=tuple(evaluation.test_rows))
    except TrainingStopped as stop:
        if not stop.epoch:
            run_dir.discard()
        raise _stopped(stop, recipe, run_dir) from None
    except KeyboardInterrupt as exc:
        run_dir.discard()
        raise _interrupted(progress.current, run_dir, cached=recipe.extract.cache, terminated=isinstance(exc, Terminated)) from None
    except BaseException:
        run_dir.discard()
        raise


def _run_directory(recipe: Recipe, out_dir: Path | None, resume: Path | None) -> RunDirectory:
    if resume is None:
        return RunDirectory(out_dir or default_out_dir(recipe.name), unique=out_dir is None)
    if recipe.finetune is None:
        raise RecipeError("--resume continues a fine-tuning run (mode: finetune); this recipe is in extract mode, which a rerun resumes from the feature cache")
    from tlkit.run.resume import find_resume_point

    point = find_resume_point(resume)
    return RunDirectory.adopt(point.partial, out_dir or point.final)


def _finetune(prepared: stages.Prepared, run_dir: RunDirectory, progress: _Progress, *, resume: bool) -> tuple[stages.Prepared, TrainedHead]:
    from tlkit.run.finetune_stage import finetune

    assert prepared.recipe.finetune is not None
    tuned, head, _ = finetune(prepared, prepared.recipe.finetune, run_dir.path, progress, resume=resume)
    return tuned, head


def _stopped(stop: TrainingStopped, recipe: Recipe, run_dir: RunDirectory) -> RunInterrupted:
    if not stop.epoch:
        return RunInterrupted(f"{stop}: stopped before the first checkpoint; nothing was kept (run the recipe again to start over)")
    source = recipe.source or "RECIPE"
    return RunInterrupted(
        f"{stop}: stopped; the checkpoint after epoch {stop.epoch} is kept in {run_dir.path}; "
        f"continue with: tlkit run {source} --resume {run_dir.path} (and the same --set values)"
    )


def _interrupted(stage: str, run_dir: RunDirectory, *, cached: bool, terminated: bool = False) -> RunInterrupted:
    # The staging folder only ever holds a finished run's files, so there is nothing partial worth keeping.
    # Extraction writes its features to the cache as it goes (and on the way out), so a rerun resumes there.
    kept = "; the feature cache keeps every feature extracted so far, and a rerun starts from them" if cached else ""
    how = "terminated (SIGTERM)" if terminated else "interrupted"
    error = RunInterrupted(f"{how} while {stage}; nothing was written to {run_dir.final} (a run directory appears only when complete){kept}")
    error.exit_code = EXIT_CODE if terminated else 130  # type: ignore[attr-defined]
    return error
