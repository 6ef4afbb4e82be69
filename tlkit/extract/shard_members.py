"""Features for samples whose images are members of tar shards (or rows of Arrow/Parquet tables), streamed, never unpacked.

The twin of :func:`tlkit.extract.features.extract_cached` for :class:`~tlkit.contract.specs.ShardMember` samples:
DataLoader workers each stream their own shards front to back (:func:`tlkit.sources.shards.stream`), decode
the wanted members from their bytes with the same decoder and preprocessing as files, and the main
process runs the forward pass. Workers finish shards in any order, so rows are put back into
sample order at the end. The cache is keyed by the sha256 of each member's bytes, recorded when the
shard was listed: a shard member and the file it was made from share their cached features.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.specs import Sample
from tlkit.extract.cache import FeatureStore
from tlkit.extract.decode import BACKGROUND, pipeline_named
from tlkit.extract.features import (
    Extraction,
    _ChunkWriter,
    _guarded,
    _no_task,
    _stop_workers,
    _worker_init,
    batch_features,
    decode_item,
    decode_timeout,
    default_workers,
)
from tlkit.extract.pipeline import ImagePipeline, as_pipeline
from tlkit.sources.image_tables import is_table
from tlkit.sources.members import stream

NOT_FOUND = "not found in its shard (was the shard rewritten after it was listed?)"


class ShardImages(IterableDataset[tuple[torch.Tensor, int, str]]):
    """Yields ``(tensor, index, error)`` for the wanted samples; each worker decodes a disjoint part of them.

    A tar shard is read front to back by one worker (each worker its own shards). A table (Arrow/Parquet) is
    read by every worker, each decoding every n-th wanted row: its rows are addressable, so one big table
    (``save_to_disk`` writes 500 MB files) still keeps all the workers busy.
    """

    def __init__(
        self, samples: Sequence[Sample], preprocessing: Preprocessing, background: tuple[int, int, int] = BACKGROUND, decoder: str = "reference"
    ) -> None:
        self.index: dict[tuple[str, str], int] = {}
        for i, sample in enumerate(samples):
            if sample.member is None:
                raise ValueError(f"{sample.path} is a file, not a shard member")
            self.index[(sample.member.shard, sample.member.name)] = i
        self.shards = list(dict.fromkeys(shard for shard, _ in self.index))
        self.tars = [shard for shard in self.shards if not is_table(shard)]
        self.tables = [shard for shard in self.shards if is_table(shard)]
        self.parts = len(self.tars) + sum(1 for shard, _ in self.index if is_table(shard))  # how many workers can share the work
        self.decode = pipeline_named(decoder, preprocessing, background)  # the run's own decoder, as for files
        self.shape = (3, preprocessing.crop_size, preprocessing.crop_size)
        self.timeout_s = decode_timeout()

    def _wanted(self, worker: int, workers: int) -> Callable[[str, str], bool]:
        def wanted(shard: str, name: str) -> bool:
            index = self.index.get((shard, name))
            return index is not None and (not is_table(shard) or index % workers == worker)

        return wanted

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, str]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = self.tars[worker::workers] + self.tables
        for member in stream(mine, wanted=self._wanted(worker, workers)):
            if member.error:  # not read (a hostile name, a link, too large, where a cut-short shard ends)
                yield torch.zeros(self.shape), self.index[(member.shard, member.name)], member.error
                continue
            # the time limit bounds decoding only: reading the shard streams (a slow network is not a hang)
            yield decode_item(self.decode, io.BytesIO(member.data), self.index[(member.shard, member.name)], self.shape, self.timeout_s)


def extract_members(
    model: torch.nn.Module, samples: Sequence[Sample], pipeline: ImagePipeline | Preprocessing, *, batch_size: int = 32,
    workers: int | None = None, device: torch.device | None = None, on_batch: Callable[[int], None] = lambda n: None,
    on_bad: Callable[[Path, str], None] | None = None, on_features: Callable[[list[int], torch.Tensor], None] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Extraction:
    """Features (N, D) of shard-member ``samples`` in sample order; the callbacks and ``forward`` (a runtime) are those of
    :func:`tlkit.extract.features.extract`."""
    start = time.perf_counter()
    pipeline = as_pipeline(pipeline)
    device = device or torch.device("cpu")
    dataset = ShardImages(samples, pipeline.preprocessing, pipeline.background, pipeline.decoder)
    num_workers = min(default_workers() if workers is None else workers, dataset.parts)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None)
    rows: dict[int, torch.Tensor] = {}
    bad: dict[int, str] = {}
    batches = iter(loader)
    try:
        with torch.inference_mode():
            for images, indices, errors in _guarded(batches):
                good = [i for i, err in enumerate(errors) if not err]
                for i in (i for i, err in enumerate(errors) if err):
                    bad[int(indices[i])] = errors[i]
                    if on_bad is not None:
                        on_bad(samples[int(indices[i])].path, errors[i])
                if good:
                    feats = batch_features(model, images[good], device, pipeline.precision, forward)
                    batch_kept = [int(indices[i]) for i in good]
                    rows.update(zip(batch_kept, feats))
                    if on_features is not None:
                        on_features(batch_kept, feats)
                on_batch(len(errors))
    finally:
        _stop_workers(batches)
    for i in range(len(samples)):
        if i not in rows and i not in bad:
            bad[i] = NOT_FOUND
            if on_bad is not None:
                on_bad(samples[i].path, NOT_FOUND)
    kept = sorted(rows)
    features = torch.stack([rows[i] for i in kept]) if kept else torch.empty(0, 0)
    listed_bad = [(samples[i].path, bad[i]) for i in sorted(bad)]
    return Extraction(features=features, kept=kept, bad=listed_bad, seconds=time.perf_counter() - start, extracted=len(kept))


def extract_members_cached(
    model: torch.nn.Module, samples: Sequence[Sample], pipeline: ImagePipeline | Preprocessing, store: FeatureStore | None, *,
    task: Callable[[int], AbstractContextManager[Callable[[int], None]]] = _no_task, chunk_images: int = 256, **options: Any,
) -> Extraction:
    """As :func:`tlkit.extract.features.extract_cached`, for shard members: only members the cache lacks are decoded."""
    start = time.perf_counter()
    hashes = [s.member.sha256 if s.member is not None else "" for s in samples]
    found = store.lookup(hashes) if store is not None else {}
    missing = [i for i, h in enumerate(hashes) if h not in found]
    extracted: dict[int, torch.Tensor] = {}
    bad: list[tuple[Path, str]] = []
    if missing:
        writer = _ChunkWriter(store, chunk_images) if store is not None else None

        def keep(indices: list[int], feats: torch.Tensor) -> None:
            for i, row in zip(indices, feats):
                extracted[missing[i]] = row
                if writer is not None:
                    writer.add(hashes[missing[i]], row)

        try:
            with task(len(missing)) as advance:
                bad = extract_members(model, [samples[i] for i in missing], pipeline, on_batch=advance, on_features=keep, **options).bad
        finally:
            if writer is not None:
                writer.flush()
    kept = [i for i, h in enumerate(hashes) if i in extracted or h in found]
    rows = [extracted[i] if i in extracted else found[hashes[i]] for i in kept]
    return Extraction(
        features=torch.stack(rows) if rows else torch.empty(0, 0), kept=kept, bad=bad,
        seconds=time.perf_counter() - start, cached=len(kept) - len(extracted), extracted=len(extracted),
    )
