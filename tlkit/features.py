"""Stream image files through a frozen backbone and return one feature vector per image.

Images are decoded and preprocessed in DataLoader worker processes while the main process runs
the forward pass, so decoding overlaps compute; only the features of N images are ever kept, never
the images. Files that cannot be decoded are reported (path and reason) to the caller, which decides
whether that is fatal (``on_bad``); a bad file never raises inside a worker. However the loop ends
(done, an error, Ctrl-C), the worker processes are shut down before :func:`extract` returns or raises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.images import BACKGROUND, BadImage, open_rgb
from tlkit.preprocessing import Preprocessing

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Extraction:
    """Features of the images that decoded, in input order, and the files that did not."""

    features: torch.Tensor
    kept: list[int]
    bad: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


class ImageFiles(Dataset[tuple[torch.Tensor, int, str]]):
    """Decodes and preprocesses one file per item; a bad file yields a zero image and its reason."""

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing, background: tuple[int, int, int] = BACKGROUND) -> None:
        self.paths = list(paths)
        self.background = background
        self.transform = preprocessing.transform()
        self.min_size = preprocessing.resize_size
        self.shape = (3, preprocessing.crop_size, preprocessing.crop_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            image = open_rgb(self.paths[index], min_size=self.min_size, background=self.background)
            return self.transform(image), index, ""
        except BadImage as exc:
            return torch.zeros(self.shape), index, str(exc)
        except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image must not kill the worker
            return torch.zeros(self.shape), index, f"cannot be preprocessed ({type(exc).__name__}: {str(exc)[:100]})"


def _stop_workers(batches: Any) -> None:
    """Shut the DataLoader's worker processes down now, not whenever the iterator is collected.

    On an exception (Ctrl-C included) the traceback keeps the iterator alive, so without this the
    workers would linger until interpreter exit. ``_shutdown_workers`` is what the iterator's own
    ``__del__`` calls; a single-process iterator has nothing to stop.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoders are one per process; threads inside them only fight the forward pass


def default_workers() -> int:
    """Decoding processes for this machine: leave most cores to the forward pass."""
    cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def autocast_context(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Eval mode, frozen, on ``device``, channels-last (faster convolutions on CPU and GPU)."""
    model = model.eval().to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def extract(
    model: torch.nn.Module,
    paths: Sequence[Path],
    preprocessing: Preprocessing,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    precision: str = "fp32",
    device: torch.device | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
    background: tuple[int, int, int] = BACKGROUND,
    on_bad: Callable[[Path, str], None] | None = None,
) -> Extraction:
    """Features for ``paths`` (N, D) as float32 on the CPU; ``on_batch(n)`` after every batch of n files.

    ``on_bad(path, reason)`` is called for each file that cannot be decoded, in input order; it may
    raise to stop the extraction (the ``on_bad_image: error`` policy).
    """
    start = time.perf_counter()
    device = device or torch.device("cpu")
    workers = default_workers() if workers is None else workers
    dataset = ImageFiles(paths, preprocessing, background)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=min(workers, max(1, len(dataset) // batch_size)) if workers else 0,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    bad: list[tuple[Path, str]] = []
    batches = iter(loader)
    try:
        with torch.inference_mode():
            for images, indices, errors in batches:
                good = [i for i, err in enumerate(errors) if not err]
                for i in range(len(errors)):
                    if errors[i]:
                        bad.append((dataset.paths[int(indices[i])], errors[i]))
                        if on_bad is not None:
                            on_bad(*bad[-1])
                if good:
                    batch = images[good] if len(good) < len(errors) else images
                    batch = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    with autocast_context(device, precision):
                        out = model(batch)
                    chunks.append(out.float().flatten(1).cpu())
                    kept.extend(int(indices[i]) for i in good)
                on_batch(len(errors))
    finally:
        _stop_workers(batches)
    features = torch.cat(chunks) if chunks else torch.empty(0, 0)
    return Extraction(features=features, kept=kept, bad=bad, seconds=time.perf_counter() - start)
