"""``torchrun -m tlkit run RECIPE``: every rank extracts its shard, rank 0 trains and writes.

:func:`tlkit.run.engine.run` comes here when the launcher's environment names more than one rank.
The flow, through the stages of :mod:`tlkit.run.stages`, every wait bounded (:mod:`tlkit.run.ranks`):

1. each rank runs ``prepare`` (same seed, so random weights agree) and ``extract(shard=...)``: only its
   :class:`~tlkit.run.stages.Shard` of each split is hashed, decoded and pushed through the backbone,
   filling the feature cache as it goes (a rerun after a failure resumes there);
2. the ranks' features are gathered on rank 0 and put back in image order (:func:`merge`), so rank 0
   holds exactly the :class:`~tlkit.run.stages.SplitFeatures` a one-process run would have;
3. rank 0 alone ends the run as a one-process run does (:func:`tlkit.run.finish.finish`: ``fit``,
   ``evaluate``, ``write``), plus ``ranks.csv``: which rank extracted which image;
4. rank 0 sends its result (or its error) to every rank; all return it, print the same line and exit alike.

What ranks send each other are JSON records and float tensors, checked on arrival (:mod:`tlkit.run.rank_records`):
never pickles, and before any image is decoded the ranks check that they run the same recipe, code and data.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from tlkit.contract.observer import Observer
from tlkit.contract.specs import Features, Sample
from tlkit.recipe.loader import Recipe
from tlkit.run import stages
from tlkit.run.finish import Progress, RunResult, finish
from tlkit.run.rank_records import RankPart, check_same_run, feature_dim, max_floats, part_record, parts_on_main, result_from, result_record
from tlkit.run.ranks import DistEnv, DistributedError, broadcast_from_main, device_for, gather_to_main, leave_together, process_group
from tlkit.run.stages import Prepared, Shard, SplitFeatures

__all__ = ["RankPart", "merge", "positions_of", "run_ranks"]
from tlkit.saved.run_directory import RunDirectory, default_out_dir

LOG_COLUMNS = ["split", "index", "path", "rank"]


class RankObserver(Observer):
    """Prefixes every note and task of a non-zero rank with ``[rank r/N]`` so interleaved logs stay readable."""

    def __init__(self, inner: Observer, env: DistEnv) -> None:
        self.inner = inner
        self.prefix = f"[{env.label()}] "

    def note(self, text: str) -> None:
        self.inner.note(self.prefix + text)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        with self.inner.task(self.prefix + description, total, unit) as advance:
            yield advance


def positions_of(kept: Sequence[Sample], shard_samples: Sequence[Sample], all_positions: Sequence[int]) -> list[int]:
    """Where each kept sample sits in the whole split (kept is an ordered subsequence of the shard's samples)."""
    result: list[int] = []
    j = 0
    for sample in kept:
        while shard_samples[j] != sample:
            j += 1
        result.append(all_positions[j])
        j += 1
    return result


def rank_shard(recipe: Recipe, env: DistEnv) -> Shard:
    """This rank's images: whole batches dealt out in turn, so every batch is one the one-process run computes.

    oneDNN picks its kernels by batch size, so a batch of other images (or of another size) can differ
    in the last bits; batches identical to the one-process run's make the features bit-identical.
    """
    return Shard(env.rank, env.world_size, block=recipe.extract.batch_size)


def _rank_part(prepared: Prepared, env: DistEnv, features: SplitFeatures) -> RankPart:
    shard = rank_shard(prepared.recipe, env)
    positions = {}
    for split in stages.SPLITS:
        samples = list(prepared.dataset.splits[split])
        mine = shard.select(samples)
        positions[split] = positions_of(features.samples[split], mine, shard.select(range(len(samples))))
    return RankPart(env.rank, positions, features)


def merge(parts: Sequence[RankPart], sizes: dict[str, int], block: int = 1) -> tuple[SplitFeatures, list[tuple[str, int, str, int]]]:
    """The ranks' features in image order, as one :class:`SplitFeatures`; and (split, index, path, rank) per image.

    An image claimed by two ranks, or outside its rank's shard, is a bug and is refused, never overwritten.
    """
    merged: dict[str, Features] = {}
    samples: dict[str, tuple[Sample, ...]] = {}
    log: list[tuple[str, int, str, int]] = []
    for split in stages.SPLITS:
        rows: list[tuple[int, int, Sample, torch.Tensor, torch.Tensor]] = []
        for part in parts:
            shard = Shard(part.rank, len(parts), block)
            feats = part.features.features[split]
            for k, (position, sample) in enumerate(zip(part.positions[split], part.features.samples[split])):
                if not shard.owns(position) or not 0 <= position < sizes[split]:
                    raise DistributedError(f"rank {part.rank} returned image {position} of {split}, which is not in its shard")
                rows.append((position, part.rank, sample, feats.x[k], feats.y[k]))
        rows.sort(key=lambda r: r[0])
        if len({r[0] for r in rows}) != len(rows):
            raise DistributedError(f"two ranks returned the same {split} image; every image must come from exactly one rank")
        merged[split] = Features(torch.stack([r[3] for r in rows]) if rows else torch.empty(0, 0), torch.stack([r[4] for r in rows]) if rows else torch.empty(0, dtype=torch.long))
        samples[split] = tuple(r[2] for r in rows)
        log.extend((split, r[0], str(r[2].path), r[1]) for r in rows)
    first = parts[0].features
    features = SplitFeatures(
        features=merged, samples=samples, bad=tuple(b for p in parts for b in p.features.bad),
        cached=sum(p.features.cached for p in parts), extracted=sum(p.features.extracted for p in parts),
        seconds=max(p.features.seconds for p in parts), cache=first.cache, runtime=first.runtime,
    )
    return features, log


def _write_rank_log(rows: list[tuple[str, int, str, int]]) -> Callable[[RunDirectory], None]:
    def write(run_dir: RunDirectory) -> None:
        with run_dir.file("ranks.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(LOG_COLUMNS)
            writer.writerows(rows)

    return write


def _extract_mine(recipe: Recipe, env: DistEnv, progress: Progress, observer: Observer) -> tuple[Prepared, RankPart]:
    with progress.timed("prepare"):
        prepared = stages.prepare(recipe, observer)
    check_same_run(env, prepared)  # before any image is decoded: every rank the same recipe, code and data
    with progress.timed("extract"):
        features = stages.extract(prepared, observer, shard=rank_shard(recipe, env))
    observer.note(f"extracted its shard (batches {env.rank}, {env.rank + env.world_size}, ... of each split): {features.extracted} extracted, {features.cached} cached")
    return prepared, _rank_part(prepared, env, features)


def _refuse(recipe: Recipe, resuming: bool) -> None:
    if resuming:
        raise DistributedError("--resume continues a fine-tuning run in one process; run it without torchrun")
    if recipe.finetune is not None:  # ranks would extract frozen features and skip the training asked for
        raise DistributedError("mode: finetune runs in one process (fine-tuning across ranks with DDP is not built yet); run it without torchrun")


def _finish_on_main(prepared: Prepared, parts: Sequence[RankPart], out_dir: Path | None, progress: Progress, env: DistEnv) -> RunResult:
    """Rank 0: the ranks' features merged in image order, then the one-process run's tail, plus ``ranks.csv``."""
    recipe = prepared.recipe
    sizes = {split: len(prepared.dataset.splits[split]) for split in stages.SPLITS}
    features, log = merge(parts, sizes, recipe.extract.batch_size)
    progress.note(f"features: {features.cached} cached, {features.extracted} extracted by {env.world_size} ranks")
    run_dir = RunDirectory(out_dir or default_out_dir(recipe.name), unique=out_dir is None)
    return finish(prepared, features, run_dir, progress, extra=_write_rank_log(log))


def run_ranks(recipe: Recipe, out_dir: Path | None, progress: Progress, env: DistEnv, *, resuming: bool = False) -> RunResult:
    """This rank's part of a multi-process run; every rank returns rank 0's result (or raises the same error)."""
    _refuse(recipe, resuming)
    device = device_for(env, recipe.extract.device)
    if device.type == "cuda":
        recipe = dataclasses.replace(recipe, extract=dataclasses.replace(recipe.extract, device="cuda"))  # cuda = this rank's GPU (set_device)
    observer = progress if env.is_main else RankObserver(progress, env)
    with process_group(env, device):
        progress.note(f"{env.label()}: pid {os.getpid()} on {socket.gethostname()}, {device}, launched by {env.launcher}")
        prepared, mine = _extract_mine(recipe, env, progress, observer)
        gathering = "gathering the extracted features"
        record, floats = part_record(mine)
        received = gather_to_main(env, record, gathering, floats, max_floats(prepared, feature_dim(mine)))
        outcome: RunResult | str = "rank 0 stopped before it could report"
        failure: Exception | None = None
        try:
            if received is not None:
                outcome = _finish_on_main(prepared, parts_on_main(mine, received, prepared, gathering), out_dir, progress, env)
        except Exception as exc:  # noqa: BLE001 - told to every rank, then raised here unchanged
            failure, outcome = exc, f"rank 0 failed: {exc}"
        # Not in a finally: after SIGTERM or Ctrl-C the other ranks are going too, and nobody would answer.
        waiting = "waiting for rank 0 to train the head and write the run"
        try:
            answer = broadcast_from_main(env, result_record(outcome) if env.is_main else None, waiting)
        except DistributedError:
            if failure is None:
                raise
        else:
            leave_together(env)  # every rank has the answer: none tears down while another still reads it
        if failure is not None:  # rank 0's own error, also when the rank that caused it has left
            raise failure
        if not env.is_main:
            outcome = result_from(answer, waiting)
    if not isinstance(outcome, RunResult):
        raise DistributedError(str(outcome))
    return dataclasses.replace(outcome, ranks=env.world_size, rank=env.rank)
