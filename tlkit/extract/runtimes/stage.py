"""The runtime for a run: :func:`choose_runtime` fed from a recipe and its data set.

The probe batch of the agreement check is the run's own first training images, and int8 calibrates
on training images spread over the split; both are decoded only when a model is converted. ``auto``
converts only for data sets large enough to pay for a conversion (:data:`AUTO_MIN_IMAGES`); a
smaller one runs on torch, and the record's ``reason`` says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tlkit.extract.decode import BadImage, pipeline_named
from tlkit.extract.runtimes.choice import Runtime, choose_runtime

AUTO_MIN_IMAGES = 100  # a conversion costs 10-60 s on 2 cores: about what eager extraction of 100-300 images costs
PROBE_IMAGES = 8
CALIBRATION_IMAGES = 64


def _decoded(paths: Sequence[Path], pipeline: Any, limit: int) -> torch.Tensor:
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


def runtime_for(recipe: Any, model: torch.nn.Module, train_paths: Sequence[Path], total_images: int, pipeline: Any, device: torch.device, cache_root: Path) -> Runtime:
    """The runtime that runs this recipe's forward pass (``recipe.extract.runtime``), and its record."""
    settings = recipe.extract
    requested = settings.runtime
    spread = list(train_paths[:: max(1, len(train_paths) // CALIBRATION_IMAGES)])
    crop = pipeline.preprocessing.crop_size
    common: dict[str, Any] = {
        "precision": settings.precision,
        "device": device,
        "identity": {"backbone": recipe.backbone.name, "options": dataclasses.asdict(recipe.backbone.options)},
        "input_shape": (3, crop, crop),
        "probe": lambda: _decoded(train_paths, pipeline, PROBE_IMAGES),
        "calibration": lambda: _decoded(spread, pipeline, CALIBRATION_IMAGES),
        "cache_root": cache_root,
        "insist_precision": settings.insist_precision,
    }
    if requested == "auto" and total_images < AUTO_MIN_IMAGES:
        runtime = choose_runtime(model, requested="torch", **common)
        reason = f"{total_images} images: too few to pay for converting the backbone (auto converts from {AUTO_MIN_IMAGES})"
        return dataclasses.replace(runtime, choice=dataclasses.replace(runtime.choice, requested="auto", reason=reason))
    return choose_runtime(model, requested=requested, **common)
