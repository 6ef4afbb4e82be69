"""``run(recipe)``: the one composition of a run, in one process or as a rank of many.

prepare -> [fine-tune] -> extract -> :func:`~tlkit.run.finish.finish` (fit -> evaluate -> write). The
CLI calls :func:`run`, and so does Python; :func:`run` decides how the run is spread: started by
``torchrun`` or ``srun`` (their environment names ranks), each rank extracts its shard and rank 0
finishes (:mod:`tlkit.run.launch`); otherwise one process does it all. Both paths, and ``tlkit
compare``, end in the same :func:`~tlkit.run.finish.finish`.

Everything that can fail because of the user's input fails before the long work starts: the recipe
is validated when it is read, the output folder is checked when
:class:`~tlkit.saved.run_directory.RunDirectory` is created and the backbone's weights are resolved
in ``prepare``, all before any image is decoded.

A run ends in one of three ways: complete (the run directory renamed into place, ``run.json`` last),
a :class:`~tlkit.errors.TlkitError` (nothing left behind but a one-line reason), or Ctrl-C, which
stops the DataLoader workers, removes the unfinished staging folder and raises
:class:`~tlkit.errors.RunInterrupted` saying at which stage it stopped and what was kept.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from tlkit.contract.observer import Observer
from tlkit.contract.specs import TrainedHead
from tlkit.errors import OutputError, RecipeError, RunInterrupted, TlkitError
from tlkit.finetune.checkpoint import CheckpointNotWritten
from tlkit.finetune.interrupts import TrainingStopped
from tlkit.recipe.loader import Recipe
from tlkit.run import stages
from tlkit.run.finish import Progress, RunResult, finish
from tlkit.run.launch import run_ranks
from tlkit.run.observing import flat_params, observers_for
from tlkit.run.ranks import DistEnv, detect
from tlkit.run.signals import EXIT_CODE, Terminated, terminate_as_interrupt
from tlkit.run.stages import seed_everything
from tlkit.saved.run_directory import RunDirectory, default_out_dir
from tlkit.util.cache_lock import held
from tlkit.util.locations import cache_root

__all__ = ["RunResult", "run", "seed_everything"]


def run(
    recipe: Recipe, out_dir: Path | None = None, observer: Observer | None = None, *, resume: Path | None = None, env: DistEnv | None = None
) -> RunResult:
    """Extract features (or fine-tune, ``mode: finetune``), train the head, evaluate, write the run directory.

    ``resume`` (fine-tuning only) continues the interrupted run at that ``--out`` or ``.partial-*`` folder.
    ``env`` is where this process sits among ranks (default: read from torchrun's or SLURM's
    environment); with more than one rank each extracts its shard and every rank returns rank 0's result.
    """
    env = detect() if env is None else env
    progress = Progress(observers_for(recipe, observer) if env.is_main else observer or Observer())  # tracking tools log rank 0 only
    with held(cache_root()):  # `tlkit cache clear` refuses while the run uses the cache (features, converted models)
        if env.distributed:
            return _observed(recipe, progress, lambda: run_ranks(recipe, out_dir, progress, env, resuming=resume is not None))
        run_dir = _run_directory(recipe, out_dir, resume)  # a refused --out is no run: observers never hear of it
        with terminate_as_interrupt(), _training_lock(recipe, run_dir):  # SIGTERM (timeout, docker, schedulers) takes Ctrl-C's clean way out
            return _observed(recipe, progress, lambda: _one_process(recipe, run_dir, progress, resume=resume is not None))


def _observed(recipe: Recipe, progress: Progress, work: Callable[[], RunResult]) -> RunResult:
    """``work()`` between the observers' ``start`` and ``end`` (``ok``, ``failed`` or ``interrupted``)."""
    progress.start(recipe.name, flat_params(recipe))
    try:
        result = work()
    except BaseException as exc:
        progress.end("interrupted" if isinstance(exc, (RunInterrupted, KeyboardInterrupt)) else "failed")
        raise
    progress.end("ok")
    return result


def _training_lock(recipe: Recipe, run_dir: RunDirectory) -> AbstractContextManager[None]:
    """Fine-tuning holds its staging folder's lock while it trains: a second ``--resume`` of it is refused."""
    from tlkit.run.resume import training_lock

    return training_lock(run_dir.path) if recipe.finetune is not None else nullcontext()


def _one_process(recipe: Recipe, run_dir: RunDirectory, progress: Progress, *, resume: bool = False) -> RunResult:
    try:
        with progress.timed("prepare"):
            prepared = stages.prepare(recipe, progress)
        trained: TrainedHead | None = None
        if recipe.finetune is not None:
            with progress.timed("finetune"):
                prepared, trained = _finetune(prepared, run_dir, progress, resume=resume)
        with progress.timed("extract"):
            features = stages.extract(prepared, progress)
        return finish(prepared, features, run_dir, progress, trained=trained)
    except TrainingStopped as stop:
        if not stop.epoch:
            run_dir.discard()
        raise _stopped(stop, recipe, run_dir) from None
    except CheckpointNotWritten as exc:
        epoch = _checkpointed_epoch(run_dir)
        if not epoch:
            run_dir.discard()
        raise _not_written(exc, epoch, recipe, run_dir) from None
    except KeyboardInterrupt as exc:
        run_dir.discard()
        raise _interrupted(progress.current, run_dir, cached=recipe.extract.cache, terminated=isinstance(exc, Terminated)) from None
    except BaseException:
        if not (resume and _checkpointed_epoch(run_dir)):  # a refused or failed --resume keeps the checkpoint it was given
            run_dir.discard()
        raise


def _checkpointed_epoch(run_dir: RunDirectory) -> int:
    """The epoch of the complete checkpoint in the staging folder (0: none, or unreadable)."""
    from tlkit.finetune.checkpoint import read_checkpoint
    from tlkit.run.finetune_stage import CHECKPOINTS

    try:
        found = read_checkpoint(run_dir.path / CHECKPOINTS)
    except (OSError, TlkitError):
        return 0
    return found[0].epoch if found else 0


def _not_written(exc: CheckpointNotWritten, epoch: int, recipe: Recipe, run_dir: RunDirectory) -> OutputError:
    if not epoch:
        return OutputError(f"{exc}; no checkpoint was kept (free some space and run the recipe again)")
    source = recipe.source or "RECIPE"
    return OutputError(
        f"{exc}; the checkpoint after epoch {epoch} is kept in {run_dir.path}; free some space, then continue with: "
        f"tlkit run {source} --resume {run_dir.path} (and the same --set values)"
    )


def _run_directory(recipe: Recipe, out_dir: Path | None, resume: Path | None) -> RunDirectory:
    if resume is None:
        return RunDirectory(out_dir or default_out_dir(recipe.name), unique=out_dir is None)
    if recipe.finetune is None:
        raise RecipeError("--resume continues a fine-tuning run (mode: finetune); this recipe is in extract mode, which a rerun resumes from the feature cache")
    from tlkit.run.resume import find_resume_point

    point = find_resume_point(resume)
    return RunDirectory.adopt(point.partial, out_dir or point.final)


def _finetune(prepared: stages.Prepared, run_dir: RunDirectory, progress: Progress, *, resume: bool) -> tuple[stages.Prepared, TrainedHead]:
    from tlkit.run.finetune_stage import finetune

    assert prepared.recipe.finetune is not None
    tuned, head, _ = finetune(prepared, prepared.recipe.finetune, run_dir.path, progress, resume=resume)
    return tuned, head


def _stopped(stop: TrainingStopped, recipe: Recipe, run_dir: RunDirectory) -> RunInterrupted:
    if not stop.epoch:
        error = RunInterrupted(f"{stop}: stopped before the first checkpoint; nothing was kept (run the recipe again to start over)")
    else:
        source = recipe.source or "RECIPE"
        error = RunInterrupted(
            f"{stop}: stopped; the checkpoint after epoch {stop.epoch} is kept in {run_dir.path}; "
            f"continue with: tlkit run {source} --resume {run_dir.path} (and the same --set values)"
        )
    error.exit_code = EXIT_CODE if stop.signal_name == "SIGTERM" else 130  # type: ignore[attr-defined]  # 143 as documented
    return error


def _interrupted(stage: str, run_dir: RunDirectory, *, cached: bool, terminated: bool = False) -> RunInterrupted:
    # The staging folder only ever holds a finished run's files, so there is nothing partial worth keeping.
    # Extraction writes its features to the cache as it goes (and on the way out), so a rerun resumes there.
    kept = "; the feature cache keeps every feature extracted so far, and a rerun starts from them" if cached else ""
    how = "terminated (SIGTERM)" if terminated else "interrupted"
    error = RunInterrupted(f"{how} while {stage}; nothing was written to {run_dir.final} (a run directory appears only when complete){kept}")
    error.exit_code = EXIT_CODE if terminated else 130  # type: ignore[attr-defined]
    return error
