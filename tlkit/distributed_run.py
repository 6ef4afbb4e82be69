"""``torchrun -m tlkit run RECIPE``: every rank extracts its shard, rank 0 trains and writes.

The flow, with every wait bounded (:mod:`tlkit.distributed`):

1. each rank builds the backbone, loads the data set and extracts its :class:`~tlkit.distributed.Shard`
   of each split through the feature cache (so a rerun after a failure resumes);
2. the ranks' features, keyed by image sha256, are gathered on rank 0, which adds those its own cache
   lacks (ranks on other machines need not share a cache folder) and writes ``ranks.csv``: which
   rank extracted which image;
3. rank 0 runs the ordinary single-process path, which now finds every feature in its cache, so the
   head, the metrics and the run directory are exactly those of a one-process run;
4. rank 0 sends its summary (or its error) to every rank; all print the same line and exit alike.
"""

from __future__ import annotations

import csv
import io
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlkit.cache import FeatureStore, hash_files, open_store
from tlkit.distributed import DistEnv, DistributedError, Shard, broadcast_from_main, device_for, gather_to_main, process_group
from tlkit.errors import DataError, TlkitError
from tlkit.features import extract_cached, prepare_model
from tlkit.observer import Observer
from tlkit.recipe import Recipe
from tlkit.shard_features import extract_members_cached
from tlkit.specs import Sample

SPLITS = ("train", "test")
LOG_COLUMNS = ["split", "index", "path", "rank", "source"]


@dataclass(frozen=True)
class RankOutcome:
    """What a rank returns: the run (rank 0 only) and the summary line every rank prints."""

    result: Any  # tlkit.engine.RunResult on rank 0, None elsewhere
    summary: str


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


@dataclass
class ShardFeatures:
    """One rank's part of one split: features by image hash, and where each image came from."""

    features: dict[str, torch.Tensor]
    log: list[tuple[str, int, str, int, str]]
    store: FeatureStore | None = None  # this rank's cache entry (not sent to rank 0)


def _store(recipe: Recipe, backbone: Any, preprocessing: Any) -> FeatureStore:
    return open_store(
        recipe.backbone.name,
        backbone.weights_id,
        preprocessing,
        recipe.extract.precision,
        seed=recipe.seed,
        options=recipe.backbone.options,
        background=recipe.images.rgb(),
    )


def _extract_shard(split: str, samples: list[Sample], env: DistEnv, recipe: Recipe, model: torch.nn.Module, preprocessing: Any,
                   store: FeatureStore, device: torch.device, observer: Observer) -> ShardFeatures:
    start, end = Shard(env.rank, env.world_size).bounds(len(samples))
    mine = samples[start:end]
    paths = [s.path for s in mine]
    members = bool(mine) and mine[0].member is not None  # shard members: hashed when listed, streamed when extracted
    hashes: list[str | None] = [s.member.sha256 if s.member else None for s in mine] if members else hash_files(paths, store.root)
    already = set(store.lookup(h for h in hashes if h is not None))

    def refuse(path: Path, reason: str) -> None:
        if recipe.images.on_bad_image == "error":
            raise DataError(f"{path}: {reason} (dataset.on_bad_image is 'error'; set it to 'skip' to leave such files out)")

    extract_fn: Any = extract_members_cached if members else extract_cached
    result = extract_fn(
        model, mine if members else paths, preprocessing, store,
        batch_size=recipe.extract.batch_size, workers=recipe.extract.workers, precision=recipe.extract.precision, device=device,
        task=lambda total: observer.task(f"extracting {split} {start}-{end - 1}", total=total, unit="img"),
        background=recipe.images.rgb(), on_bad=refuse,
    )
    kept = set(result.kept)
    features = {hashes[i]: row for i, row in zip(result.kept, result.features) if hashes[i] is not None}
    log = [
        (split, start + i, str(path), env.rank, "bad" if i not in kept else "cached" if hashes[i] in already else "extracted")
        for i, path in enumerate(paths)
    ]
    extracted = sum(1 for row in log if row[4] == "extracted")
    observer.note(f"{split}: images {start}-{end - 1} of {len(samples)}: {extracted} extracted, {len(kept) - extracted} cached")
    return ShardFeatures(features, log)  # type: ignore[arg-type]


def extract_rank_shards(recipe: Recipe, env: DistEnv, device: torch.device, observer: Observer) -> ShardFeatures:
    """This rank's shard of every split, extracted into the feature cache."""
    from tlkit.engine import seed_everything

    seed_everything(recipe.seed)
    backbone = recipe.backbone.spec.build(recipe.weights, recipe.backbone.options)
    preprocessing = recipe.backbone.spec.resolve_preprocessing()
    dataset = recipe.dataset.spec.load(recipe.dataset.options)
    store = _store(recipe, backbone, preprocessing)
    model = prepare_model(backbone.model, device)
    combined = ShardFeatures({}, [], store)
    for split in SPLITS:
        part = _extract_shard(split, list(dataset.splits[split]), env, recipe, model, preprocessing, store, device, observer)
        combined.features.update(part.features)
        combined.log.extend(part.log)
    return combined


def _merge_on_main(store: FeatureStore, parts: list[ShardFeatures]) -> list[tuple[str, int, str, int, str]]:
    """Put the other ranks' features into rank 0's cache (a cache shared by all already holds them)."""
    features = {h: row for part in parts for h, row in part.features.items()}
    present = store.lookup(features)
    missing = {h: row for h, row in features.items() if h not in present}
    for offset in range(0, len(missing), 1024):
        names = sorted(missing)[offset: offset + 1024]
        store.write({h: missing[h] for h in names})
    return sorted((row for part in parts for row in part.log), key=lambda r: (SPLITS.index(r[0]), r[1]))


def write_rank_log(run_dir: Path, rows: list[tuple[str, int, str, int, str]]) -> Path:
    """``ranks.csv`` in the finished run directory, written whole or not at all."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LOG_COLUMNS)
    writer.writerows(rows)
    target = run_dir / "ranks.csv"
    tmp = run_dir / ".ranks.csv.tmp"
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, target)
    return target


def summary_line(env: DistEnv, metrics: dict[str, Any], out_dir: Path) -> str:
    return (
        f"{env.world_size} ranks done: test accuracy {metrics['test_accuracy']:.4f}, "
        f"{metrics['counts']['train']} train and {metrics['counts']['test']} test images; run directory {out_dir} (written by rank 0)"
    )


def run_ranks(recipe: Recipe, out_dir: Path | None, observer: Observer, env: DistEnv) -> RankOutcome:
    """This rank's part of a multi-process run; every rank returns (or raises) the same outcome."""
    if not recipe.extract.cache:
        raise DistributedError("under torchrun the ranks hand their features to rank 0 through the feature cache; set extract.cache: true")
    device = device_for(env, recipe.extract.device)
    rank_observer = observer if env.is_main else RankObserver(observer, env)
    with process_group(env, device):
        observer.note(f"{env.label()}: pid {os.getpid()} on {socket.gethostname()}, {device}, {env.launcher}")
        mine = extract_rank_shards(recipe, env, device, rank_observer)
        store, mine.store = mine.store, None
        parts = gather_to_main(env, mine, "gathering the extracted features")
        outcome: tuple[str, str] = ("error", "rank 0 stopped before it could report")
        result = None
        try:
            if parts is not None:
                assert store is not None
                log = _merge_on_main(store, parts)
                from tlkit.engine import run

                result = run(recipe, out_dir, observer)
                write_rank_log(result.out_dir, log)
                outcome = ("ok", summary_line(env, result.metrics, result.out_dir))
        except TlkitError as exc:
            outcome = ("error", f"rank 0 failed: {exc}")
            raise
        finally:
            outcome = broadcast_from_main(env, outcome, "waiting for rank 0 to train the head and write the run")
    if outcome[0] != "ok":
        raise DistributedError(outcome[1])
    return RankOutcome(result, outcome[1])
