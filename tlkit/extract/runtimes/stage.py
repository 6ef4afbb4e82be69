"""The runtime for a run: :func:`choose_runtime` fed from a recipe and its data set.

The probe batch of the agreement check is drawn from the run's own training images across its
classes (one of each class in turn, picked at random from the recipe's seed), and int8 calibrates
on training images spread over the split; both are decoded only when a model is converted. ``auto``
converts only for data sets large enough to pay for a conversion (:data:`AUTO_MIN_IMAGES`); a
smaller one runs on torch, and the record's ``reason`` says why.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tlkit.extract.decode import BadImage, pipeline_named
from tlkit.extract.pipeline import ImagePipeline
from tlkit.extract.runtimes.choice import Runtime, choose_runtime

AUTO_MIN_IMAGES = 100  # a conversion costs 10-60 s on 2 cores: about what eager extraction of 100-300 images costs
PROBE_IMAGES = 8
CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class RuntimeRequest:
    """What choosing the runtime of a run needs from it: the recipe's settings, the backbone's identity, its images.

    ``requested``, ``precision`` and ``insist_precision`` are the recipe's ``extract`` settings;
    ``backbone`` and ``options`` (plain data) name the converted model in the model store, next to
    the hash of its weights; ``train_paths`` give the probe and calibration images, decoded through
    ``pipeline`` exactly as extraction will, and ``train_labels`` (beside them) with ``seed`` spread the
    probe over the classes; ``total_images`` decides whether ``auto`` converts at all.
    """

    requested: str
    precision: str
    backbone: str
    options: Mapping[str, object]
    pipeline: ImagePipeline
    device: torch.device
    train_paths: Sequence[Path]
    total_images: int
    cache_root: Path
    insist_precision: bool = False
    train_labels: Sequence[int] | None = None
    seed: int = 0


def _decoded(paths: Sequence[Path], pipeline: ImagePipeline, limit: int) -> torch.Tensor:
    decode = pipeline_named(pipeline.decoder, pipeline.preprocessing, pipeline.background)
    images = []
    for path in paths:
        try:
            images.append(decode(path))
        except BadImage:
            continue
        if len(images) == limit:
            break
    if not images:
        crop = pipeline.preprocessing.crop_size
        return torch.randn(limit, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    return torch.stack(images)


def across_classes(paths: Sequence[Path], labels: Sequence[int] | None, seed: int) -> list[Path]:
    """``paths`` in the order the probe takes them: one image of each class in turn, shuffled within each class by ``seed``.

    The first few images of a folder are usually of one class, and a converted model that agreed on
    one class only would be trusted on all of them.
    """
    rng = random.Random(seed)
    groups: dict[int, list[Path]] = {}
    for path, label in zip(paths, labels if labels is not None else [0] * len(paths)):
        groups.setdefault(label, []).append(path)
    for members in groups.values():
        rng.shuffle(members)
    turns = itertools.zip_longest(*(groups[label] for label in sorted(groups)))
    return [path for turn in turns for path in turn if path is not None]


def runtime_for(model: torch.nn.Module, request: RuntimeRequest) -> Runtime:
    """The runtime that runs this forward pass (``request.requested``), and its record."""
    auto_skips = request.requested == "auto" and request.total_images < AUTO_MIN_IMAGES
    paths = request.train_paths
    spread = list(paths[:: max(1, len(paths) // CALIBRATION_IMAGES)])
    crop = request.pipeline.preprocessing.crop_size
    runtime = choose_runtime(
        model,
        requested="torch" if auto_skips else request.requested,
        precision=request.precision,
        device=request.device,
        identity={"backbone": request.backbone, "options": dict(request.options)},
        input_shape=(3, crop, crop),
        probe=lambda: _decoded(across_classes(paths, request.train_labels, request.seed), request.pipeline, PROBE_IMAGES),
        calibration=lambda: _decoded(spread, request.pipeline, CALIBRATION_IMAGES),
        cache_root=request.cache_root,
        insist_precision=request.insist_precision,
    )
    if not auto_skips:
        return runtime
    reason = f"{request.total_images} images: too few to pay for converting the backbone (auto converts from {AUTO_MIN_IMAGES})"
    return dataclasses.replace(runtime, choice=dataclasses.replace(runtime.choice, requested="auto", reason=reason))
