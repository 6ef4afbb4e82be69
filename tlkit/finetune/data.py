"""Labelled training images, decoded and augmented in DataLoader workers, in an order fixed by (seed, epoch).

Each epoch gets its own ``torch.Generator`` seeded from the recipe's seed and the epoch number: it
decides the shuffle and the seeds of the worker processes (which seed the random crops and flips).
With workers, an epoch's batches therefore depend only on (seed, epoch); without them the transforms
draw from the process's own random state, which every checkpoint saves and a resumed run restores.
Either way a resumed run sees exactly the batches an uninterrupted one would. Files are decoded by the same
:func:`tlkit.extract.decode.open_rgb` as extraction; a file that cannot be decoded comes back with its reason
and the trainer leaves it out of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.contract.specs import Sample
from tlkit.extract.decode import BadImage, open_rgb
from tlkit.extract.features import _worker_init, loader_workers
from tlkit.extract.pipeline import ImagePipeline

EPOCH_SEED_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs never collide for epochs below it


class TrainImages(Dataset[tuple[torch.Tensor, int, str]]):
    """One augmented image per item with its index (the label is ``samples[index].label``); a file that
    will not decode gives zeros and its reason."""

    def __init__(self, samples: Sequence[Sample], pipeline: ImagePipeline, transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.background = pipeline.background
        self.min_size = pipeline.preprocessing.resize_size
        size = pipeline.preprocessing.crop_size
        self.shape = (3, size, size)

    def labels(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.samples[int(i)].label for i in indices], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        sample = self.samples[index]
        try:
            image = open_rgb(sample.path, min_size=self.min_size, background=self.background)
            return self.transform(image), index, ""
        except BadImage as exc:
            return torch.zeros(self.shape), index, str(exc)
        except Exception as exc:  # noqa: BLE001 - one odd image must not kill the worker
            return torch.zeros(self.shape), index, f"cannot be preprocessed ({type(exc).__name__}: {str(exc)[:100]})"


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle and worker seeds."""
    return torch.Generator().manual_seed((seed * EPOCH_SEED_STRIDE + epoch) % 2**63)


def epoch_loader(dataset: TrainImages, *, batch_size: int, workers: int | None, seed: int, epoch: int, pin: bool = False) -> DataLoader[Any]:
    """A shuffled loader for one epoch; a last batch of a single image is dropped (batch norm cannot train on it)."""
    num_workers = loader_workers(len(dataset), batch_size, workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=epoch_generator(seed, epoch),
        drop_last=len(dataset) % batch_size == 1,
        num_workers=num_workers,
        worker_init_fn=_worker_init if num_workers else None,
        pin_memory=pin,
        prefetch_factor=4 if num_workers else None,
    )


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of :func:`epoch_loader` (the schedule is counted in steps)."""
    full, rest = divmod(n_images, batch_size)
    return full + (1 if rest > 1 else 0)
