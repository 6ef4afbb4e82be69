"""Stream image files through a frozen backbone and return one feature vector per image.

Images are decoded and preprocessed in DataLoader worker processes while the main process runs
the forward pass, so decoding overlaps compute; only the features of N images are ever kept, never
the images. Files that cannot be decoded are reported (path and reason) to the caller, which decides
whether that is fatal (``on_bad``); a bad file never raises inside a worker. However the loop ends
(done, an error, Ctrl-C), the worker processes are shut down before :func:`extract` returns or raises.

:func:`extract_cached` puts the feature cache (:mod:`tlkit.extract.cache`) in front: images whose bytes the
cache already holds for this extractor are not decoded at all, and new features are written in
chunks as extraction proceeds, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.contract.preprocessing import Preprocessing
from tlkit.errors import DataError, DeviceError, WeightsError
from tlkit.extract.cache import FeatureStore, hash_files
from tlkit.extract.decode import BACKGROUND, BadImage, pipeline_named
from tlkit.extract.pipeline import ImagePipeline, as_pipeline
from tlkit.util.units import positive_number

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Extraction:
    """Features of the images that decoded, in input order, and the files that did not."""

    features: torch.Tensor
    kept: list[int]
    bad: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    cached: int = 0
    extracted: int = 0


DECODE_TIMEOUT_ENV = "TLKIT_DECODE_TIMEOUT_S"
DECODE_TIMEOUT_S = 30.0  # a photo decodes in milliseconds; a file that takes this long is crafted or broken


def decode_timeout() -> float:
    """Seconds one file may take to decode and preprocess (``$TLKIT_DECODE_TIMEOUT_S``, default 30; ``inf``: no limit)."""
    try:
        return positive_number(DECODE_TIMEOUT_ENV, DECODE_TIMEOUT_S)
    except ValueError as exc:
        raise DataError(f"{exc}: give the seconds one image may take to decode, e.g. {DECODE_TIMEOUT_ENV}=30") from None


class _DecodeTimeout(Exception):
    pass


def _expire(signum: int, frame: Any) -> None:
    raise _DecodeTimeout()


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` in a DataLoader worker (its own process: SIGALRM is free there)."""
    if torch.utils.data.get_worker_info() is None or not math.isfinite(seconds):
        yield  # inf: no limit; the main process: its timers belong to the caller; the batch timeout still bounds workers
        return
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class ImageFiles(Dataset[tuple[torch.Tensor, int, str]]):
    """Decodes and preprocesses one file per item; a bad file yields a zero image and its reason.

    In worker processes each file gets :func:`decode_timeout` seconds: a decoder that does not come
    back (a crafted file) is interrupted and the file is reported like any other bad one.
    """

    def __init__(
        self, paths: Sequence[Path], preprocessing: Preprocessing, background: tuple[int, int, int] = BACKGROUND, decoder: str = "reference"
    ) -> None:
        self.paths = list(paths)
        self.decode = pipeline_named(decoder, preprocessing, background)
        self.shape = (3, preprocessing.crop_size, preprocessing.crop_size)
        self.timeout_s = decode_timeout()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        return decode_item(self.decode, self.paths[index], index, self.shape, self.timeout_s)


def decode_item(decode: Callable[[Any], torch.Tensor], source: Any, index: int, shape: tuple[int, ...], timeout_s: float) -> tuple[torch.Tensor, int, str]:
    """``(tensor, index, "")`` for an image that decodes; ``(zeros, index, reason)`` for one that does not.

    ``source`` is a path or a file object (a shard member's bytes). In a worker process the decoding
    gets ``timeout_s`` seconds: a decoder that does not come back (a crafted file) is interrupted and
    the image is reported like any other bad one. Nothing one image does kills the worker.
    """
    try:
        with _time_limit(timeout_s):
            return decode(source), index, ""
    except _DecodeTimeout:
        return torch.zeros(shape), index, f"took longer than {timeout_s:g} s to decode (a crafted or broken file?); {DECODE_TIMEOUT_ENV} sets the limit"
    except BadImage as exc:
        return torch.zeros(shape), index, str(exc)
    except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image must not kill the worker
        return torch.zeros(shape), index, f"cannot be preprocessed ({type(exc).__name__}: {str(exc)[:100]})"


def _stop_workers(batches: Any) -> None:
    """Shut the DataLoader's worker processes down now, not whenever the iterator is collected.

    On an exception (Ctrl-C included) the traceback keeps the iterator alive, so without this the
    workers would linger until interpreter exit. ``_shutdown_workers`` is what the iterator's own
    ``__del__`` calls; a single-process iterator has nothing to stop.

    A worker found dead while stopping them died of the same signal that stopped this process (a
    SIGTERM or Ctrl-C sent to the whole process group): the DataLoader reports it as a RuntimeError
    from its SIGCHLD handler, which would replace the interrupt being handled. It is stopped, which
    is what was wanted, so that report is dropped.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:
        return
    try:
        shutdown()
    except RuntimeError as exc:
        if not ("DataLoader worker" in str(exc) and "killed by signal" in str(exc)):
            raise


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoders are one per process; threads inside them only fight the forward pass
    # Ctrl-C in a terminal reaches the whole process group. The main process alone handles it and stops
    # the workers (_stop_workers); a worker dying of it on its own races that shutdown and can print a
    # traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """Decoding processes for this machine: leave most cores to the forward pass.

    Decoding a photo costs a few ms against tens of ms of forward pass per image on a CPU, so half
    the cores (at least one, at most eight) keep the forward pass fed.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // 2))


def loader_workers(images: int, batch_size: int, workers: int | None) -> int:
    """DataLoader worker processes for ``images`` in batches: ``workers`` (``None``: :func:`default_workers`), fewer for few batches.

    A single batch cannot overlap decoding with compute, so starting a worker would only cost time;
    and no more workers than batches.
    """
    workers = default_workers() if workers is None else workers
    return min(workers, max(1, images // batch_size)) if images > batch_size else 0


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; asking for a GPU that is not there is a :class:`DeviceError`."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device '{setting}' is not cpu, cuda or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device '{setting}' was asked for, but this machine has no CUDA GPU (or torch was built without CUDA); "
            "use cpu or auto (--device cpu for predict, --set extract.device=cpu for run)"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device '{setting}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def autocast_context(device: torch.device, precision: str) -> Any:
    """Autocast at bf16/fp16; anything else runs fp32 in eager torch (``int8`` is a converted runtime's
    precision: a run's ``model.json`` may say it, and eager predict then computes in fp32)."""
    dtype = _DTYPES.get(precision)
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def torch_forward(model: torch.nn.Module, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The eager forward pass: channels-last input on ``device``, autocast per ``precision``, (N, D) float32 on the CPU."""

    def forward(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_context(device, precision):
            return model(batch).float().flatten(1).cpu()

    return forward


def slow_precision_note(device: torch.device, precision: str) -> str | None:
    """A warning when ``precision`` would be emulated (and many times slower) on this CPU; ``None`` otherwise.

    CPUs without AVX-512-BF16/AMX (or FP16) instructions run reduced-precision convolutions through a
    slow reference path: measured here, bf16 ResNet-18 ran about 10x slower than fp32.
    """
    if device.type != "cpu" or precision == "fp32":
        return None
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    supported = getattr(torch.ops.mkldnn, check, None)
    if supported is None or supported():
        return None
    return f"this CPU has no fast {precision} path, so extract.precision: {precision} is emulated and much slower than fp32"


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode, frozen, on ``device``, channels-last (faster convolutions on CPU and GPU)."""
    model = model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def _loader(dataset: ImageFiles, batch_size: int, workers: int | None, device: torch.device) -> DataLoader[Any]:
    num_workers = loader_workers(len(dataset), batch_size, workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
        # A backstop for a decoder stuck where no signal reaches it: no batch for this long ends the wait.
        timeout=_loader_timeout(batch_timeout(dataset.timeout_s, batch_size)) if num_workers else 0,
    )


def batch_timeout(per_file_s: float, batch_size: int) -> float:
    """How long to wait for one batch from a worker: every file at its limit, plus slack for start-up."""
    return per_file_s * (batch_size + 1) + 5.0


def _loader_timeout(seconds: float) -> float:
    """The DataLoader's ``timeout`` (0 waits without one): ``inf`` from ``TLKIT_DECODE_TIMEOUT_S=inf`` is no limit."""
    return seconds if math.isfinite(seconds) else 0


def _hung(dataset: ImageFiles, done: int, batch_size: int) -> DataError:
    """The error for a batch that never came: its files, one of which hangs the decoder."""
    suspects = dataset.paths[done : done + batch_size]
    shown = ", ".join(map(str, suspects[:4])) + (f" and {len(suspects) - 4} more" if len(suspects) > 4 else "")
    return DataError(
        f"decoding stopped: no batch came back within {batch_timeout(dataset.timeout_s, batch_size):g} s, so one of these files "
        f"hangs the decoder: {shown}; move it out of the data set ({DECODE_TIMEOUT_ENV} sets the limit per file)"
    )


class NonFiniteFeatures(WeightsError):
    """The backbone gave NaN or infinite features: raised by :func:`batch_features` before anything
    sees them (the cache, a head), so a run stops in one line instead of fitting or storing NaN.
    Callers that know the backbone (the run's stages, ``tlkit predict``) name it and its weights file."""


def batch_features(
    model: torch.nn.Module, batch: torch.Tensor, device: torch.device, precision: str, forward: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """Features (n, D) float32 on the CPU for a batch of n preprocessed images (through ``forward`` when given).

    Non-finite features are :class:`NonFiniteFeatures`: preprocessed pixels are always finite, so the
    cause is the backbone (weights holding NaN/inf) or, at reduced precision, an overflow.
    """
    n = len(batch)
    if n == 1:
        # oneDNN takes another code path for a batch of one; its results differ in the last bits.
        # Computing the image twice keeps features identical to a full batch.
        batch = batch.expand(2, -1, -1, -1)
    # a runtime from tlkit.extract.runtimes handles device and precision itself
    features = (forward or torch_forward(model, device, precision))(batch)[:n]
    finite = torch.isfinite(features).all(dim=1) if features.dim() == 2 else torch.isfinite(features).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        hint = f"; at extract.precision {precision} an overflow can do this too, try fp32" if precision != "fp32" else ""
        raise NonFiniteFeatures(
            f"the backbone gave NaN or infinite features for {bad} of {n} images of a batch: its weights hold NaN or inf "
            f"(a damaged or diverged weights file){hint}; nothing was cached"
        )
    return features


def extract(
    model: torch.nn.Module,
    paths: Sequence[Path],
    pipeline: ImagePipeline | Preprocessing,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
    on_bad: Callable[[Path, str], None] | None = None,
    on_features: Callable[[list[int], torch.Tensor], None] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Extraction:
    """Features for ``paths`` (N, D) as float32 on the CPU; ``on_batch(n)`` after every batch of n files.

    ``on_bad(path, reason)`` is called for each file that cannot be decoded, in input order; it may
    raise to stop the extraction (the ``on_bad_image: error`` policy). ``on_features(indices,
    features)`` sees each batch's features as soon as they exist (the cache writes them in chunks
    from there). Features never depend on the batch size or on the number of workers: decoding is
    deterministic and each image is computed independently. A bare :class:`Preprocessing` means the
    default decoding (white background) at fp32. ``forward`` (a :class:`tlkit.extract.runtimes.Runtime`'s)
    replaces ``model`` for the forward pass.
    """
    start = time.perf_counter()
    pipeline = as_pipeline(pipeline)
    device = device or torch.device("cpu")
    dataset = ImageFiles(paths, pipeline.preprocessing, pipeline.background, pipeline.decoder)
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    bad: list[tuple[Path, str]] = []
    batches = iter(_loader(dataset, batch_size, workers, device))
    done = [0]  # files received so far: the batch that never comes starts there
    try:
        with torch.inference_mode():
            for images, indices, errors in _guarded(batches, lambda: _hung(dataset, done[0], batch_size)):
                done[0] += len(errors)
                good = [i for i, err in enumerate(errors) if not err]
                for i in (i for i, err in enumerate(errors) if err):
                    bad.append((dataset.paths[int(indices[i])], errors[i]))
                    if on_bad is not None:
                        on_bad(*bad[-1])
                if good:
                    feats = batch_features(model, images[good] if len(good) < len(errors) else images, device, pipeline.precision, forward)
                    chunks.append(feats)
                    kept.extend(int(indices[i]) for i in good)
                    if on_features is not None:
                        on_features([int(indices[i]) for i in good], feats)
                on_batch(len(errors))
    finally:
        _stop_workers(batches)
    features = torch.cat(chunks) if chunks else torch.empty(0, 0)
    return Extraction(features=features, kept=kept, bad=bad, seconds=time.perf_counter() - start, extracted=len(kept))


def _guarded(batches: Iterator[Any], hung: Callable[[], DataError] | None = None) -> Iterator[Any]:
    """The batches, with the DataLoader's timeout turned into the one-line error ``hung()`` builds.

    A worker killed by SIGTERM means the process group got it (a launcher, ``kill -TERM -PGID``) and
    this process may not have run its own handler yet: it is handled as this process's SIGTERM, so
    the run stops the way that handler stops it (exit 143, or a rank's "stopped by the launcher").
    """
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as exc:
            if hung is not None and "DataLoader timed out" in str(exc):
                raise hung() from None
            handler = signal.getsignal(signal.SIGTERM)
            if "DataLoader worker" in str(exc) and "Terminated" in str(exc) and callable(handler):
                handler(signal.SIGTERM, None)
            raise
        yield batch


@contextmanager
def _no_task(total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def extract_cached(
    model: torch.nn.Module,
    paths: Sequence[Path],
    pipeline: ImagePipeline | Preprocessing,
    store: FeatureStore | None,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    device: torch.device | None = None,
    task: Callable[[int], AbstractContextManager[Callable[[int], None]]] = _no_task,
    chunk_images: int = 256,
    on_bad: Callable[[Path, str], None] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Extraction:
    """Like :func:`extract`, reusing and filling ``store`` (``None``: no cache).

    Only images missing from the store are decoded; ``task(n)`` is entered around their extraction
    (``n`` images, skipped when none) and yields the progress callback. New features are written
    every ``chunk_images`` images and when extraction stops for any reason, so work is never lost.
    """
    start = time.perf_counter()
    options: dict[str, Any] = {"batch_size": batch_size, "workers": workers, "device": device, "on_bad": on_bad, "forward": forward}
    if store is None:
        with task(len(paths)) as advance:
            return extract(model, paths, pipeline, on_batch=advance, **options)
    hashes = hash_files(paths, store.root, notes=store.index_notes)
    found = store.lookup(h for h in hashes if h is not None)
    missing = [i for i, h in enumerate(hashes) if h is None or h not in found]
    extracted: dict[int, torch.Tensor] = {}
    bad: list[tuple[Path, str]] = []
    if missing:
        writer = _ChunkWriter(store, chunk_images)

        def keep(indices: list[int], feats: torch.Tensor) -> None:
            for i, row in zip(indices, feats):
                extracted[missing[i]] = row
                writer.add(hashes[missing[i]], row)

        try:
            with task(len(missing)) as advance:
                bad = extract(model, [paths[i] for i in missing], pipeline, on_batch=advance, on_features=keep, **options).bad
        finally:
            writer.flush()
    kept = [i for i, h in enumerate(hashes) if i in extracted or (h is not None and h in found)]
    rows = [extracted[i] if i in extracted else found[hashes[i]] for i in kept]  # type: ignore[index]
    return Extraction(
        features=torch.stack(rows) if rows else torch.empty(0, 0),
        kept=kept,
        bad=bad,
        seconds=time.perf_counter() - start,
        cached=len(kept) - len(extracted),
        extracted=len(extracted),
    )


class _ChunkWriter:
    """Collects new features and writes them to the store every ``size`` images (and on :meth:`flush`)."""

    def __init__(self, store: FeatureStore, size: int) -> None:
        self.store = store
        self.size = size
        self.pending: dict[str, torch.Tensor] = {}

    def add(self, digest: str | None, row: torch.Tensor) -> None:
        if digest is not None:
            self.pending[digest] = row.clone()
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        self.store.write(self.pending)
        self.pending = {}
