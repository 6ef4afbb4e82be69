"""The one tail of every run: fit the head, evaluate, write the run directory and commit it.

A one-process run (:func:`tlkit.run.engine.run`), rank 0 of a multi-process run
(:mod:`tlkit.run.launch`) and each (backbone, head) pair of ``tlkit compare`` all end here, so a
run directory is written one way whichever path made its features. Everything before this point
(``prepare``, ``extract``, fine-tuning) differs between those paths; nothing after it does.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tlkit import __version__
from tlkit.audit.report import AuditReport
from tlkit.contract.observer import Observer, ParamValue, RunStatus
from tlkit.contract.specs import TrainedHead
from tlkit.outputs.metrics import RunMetrics
from tlkit.outputs.predictions import PredictionRow
from tlkit.run import stages
from tlkit.run.audit_stage import run_audit, run_inputs, with_audit
from tlkit.run.observing import final_metrics
from tlkit.run.resume import CHECKPOINTS
from tlkit.run.stages import BadFile, Prepared, SplitFeatures
from tlkit.run.write import write
from tlkit.saved.run_directory import RunDirectory
from tlkit.util import clock
from tlkit.util.locations import cache_root


@dataclass(frozen=True)
class RunResult:
    """Where a finished run went, its metrics, its test predictions (``predictions.csv``, in memory), and the files it skipped.

    In a multi-process run every rank returns rank 0's result (rank 0 wrote it), with ``ranks`` the
    number of processes and ``rank`` this one; :attr:`ranks_line` is the line each of them prints. The
    other ranks receive it as JSON, so theirs holds the run directory and the headline figures
    (accuracies, correct and total per split, counts); the whole record is the run's ``metrics.json``.
    """

    out_dir: Path
    metrics: RunMetrics
    bad_images: tuple[BadFile, ...] = ()
    predictions: tuple[PredictionRow, ...] = ()
    ranks: int = 1
    rank: int = 0
    audit_lines: tuple[str, ...] = ()  # the data audit's few lines (audit.json / audit.csv hold the findings)

    @property
    def ranks_line(self) -> str:
        """One line every rank of a multi-process run prints alike ("" for a one-process run)."""
        if self.ranks == 1:
            return ""
        m = self.metrics
        return (
            f"{self.ranks} ranks done: test accuracy {m.test_accuracy:.4f}, "
            f"{m.counts['train']} train and {m.counts['test']} test images; run directory {self.out_dir} (written by rank 0)"
        )


class Progress(Observer):
    """Passes everything on to the caller's observer, remembering the stage (for an interrupt) and each stage's seconds."""

    def __init__(self, observer: Observer, timings: Mapping[str, float] | None = None) -> None:
        self.inner = observer
        self.current = "building the backbone"
        self.timings: dict[str, float] = dict(timings or {})
        self.started = clock.command_started(time.time())  # the command's start, else this run's: the recorded total is wall time

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

    def start(self, name: str, params: Mapping[str, ParamValue]) -> None:
        self.inner.start(name, params)

    def metrics(self, values: Mapping[str, float]) -> None:
        self.inner.metrics(values)

    def artifacts(self, run_dir: Path) -> None:
        self.inner.artifacts(run_dir)

    def end(self, status: RunStatus) -> None:
        self.inner.end(status)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - start


def finish(
    prepared: Prepared,
    features: SplitFeatures,
    run_dir: RunDirectory,
    progress: Progress,
    *,
    trained: TrainedHead | None = None,
    extra: Callable[[RunDirectory], None] | None = None,
) -> RunResult:
    """``fit`` (unless fine-tuning trained the head) -> ``evaluate`` -> ``write`` -> commit ``run_dir``.

    ``extra`` writes what one path adds (``ranks.csv``). On any failure the staging folder is
    removed, so a run directory appears complete or not at all; ``progress.timings`` (the stages
    so far) is left as it was, so one extraction can end in several runs (``tlkit compare``).
    """
    timings = dict(progress.timings)
    try:
        if trained is None:
            started = time.perf_counter()
            trained = stages.fit(prepared, features, progress)
            timings["train_head"] = time.perf_counter() - started
        timings["total"] = max(sum(timings.values()), time.time() - progress.started)
        evaluation = stages.evaluate(prepared, features, trained, timings)
        audit = _audit(prepared, features, evaluation, progress)
        if audit is not None:
            evaluation = dataclasses.replace(evaluation, metrics=dataclasses.replace(evaluation.metrics, audit=with_audit(audit.summary)))
        progress.stage("writing the run directory")
        write(run_dir, prepared, features, trained, evaluation, audit=audit.contents() if audit is not None else None)
        if extra is not None:
            extra(run_dir)
        shutil.rmtree(run_dir.file(CHECKPOINTS), ignore_errors=True)  # a finished run keeps its trained weights, not its checkpoints
        final = run_dir.commit({"tlkit": __version__, "recipe": prepared.recipe.name, "complete": True})
        lines = tuple(audit.lines("report.html#audit")) if audit is not None else ()
    except BaseException:
        run_dir.discard()
        raise
    progress.metrics(final_metrics(evaluation.metrics))  # the run is complete: observers see it as it was written
    progress.artifacts(final)
    return RunResult(out_dir=final, metrics=evaluation.metrics, bad_images=features.bad, predictions=tuple(evaluation.test_rows), audit_lines=lines)


def _audit(prepared: Prepared, features: SplitFeatures, evaluation: stages.Evaluation, progress: Progress) -> AuditReport | None:
    """The data audit of this run (``audit.enabled``, on by default), timed into ``timings_s['audit']``."""
    if not prepared.recipe.audit.enabled:
        return None
    started = time.perf_counter()
    memo = cache_root() if prepared.recipe.extract.cache else None
    report = run_audit(run_inputs(prepared, features, evaluation.test_rows), progress, memo=memo)
    evaluation.metrics.timings_s["audit"] = time.perf_counter() - started
    return report
