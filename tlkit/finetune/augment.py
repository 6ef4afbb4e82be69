"""Training transforms derived from the backbone's own preprocessing, the way timm builds them.

The crop size, interpolation, mean and std come from the backbone's :class:`~tlkit.contract.preprocessing.Preprocessing`
(the record extraction and predict use), so training sees images normalised exactly as evaluation
does; only the geometry is random. timm's ``create_transform(is_training=True)`` does the work
(random resized crop with the backbone's interpolation, flips, optional colour jitter and
auto-augment), so the behaviour is the one timm users know.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.data import create_transform

from tlkit.contract.preprocessing import Preprocessing
from tlkit.finetune.settings import AugmentSettings


def train_transform(preprocessing: Preprocessing, augment: AugmentSettings) -> Callable[[Any], torch.Tensor]:
    """PIL RGB image -> augmented, normalised float tensor (3, crop, crop); the eval transform when augmentation is off."""
    if not augment.enabled:
        return preprocessing.transform()
    return create_transform(  # type: ignore[no-any-return]
        preprocessing.crop_size,
        is_training=True,
        scale=(float(augment.scale[0]), float(augment.scale[1])),
        ratio=(float(augment.ratio[0]), float(augment.ratio[1])),
        hflip=augment.hflip,
        vflip=augment.vflip,
        color_jitter=augment.color_jitter or None,  # type: ignore[arg-type]  # timm adds no jitter transform for None
        auto_augment=augment.auto_augment,
        interpolation=preprocessing.interpolation,
        mean=tuple(preprocessing.mean),
        std=tuple(preprocessing.std),
    )
