"""How a backbone wants its images: a frozen record, built from the library that defines it.

Backbones never hard-code their preprocessing: torchvision models derive it from their weights
enum (``weights.transforms()``), timm models from their pretrained config. The record is also part
of the feature-cache key and of the saved model, so it must be plain data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize_size``, centre-crop ``crop_size``, scale to [0, 1], normalise."""

    crop_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.resize_size < self.crop_size:
            raise ValueError("resize_size must be at least crop_size")

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """A torchvision transform from a PIL RGB image to a normalised float tensor (3, H, W)."""
        return T.Compose(
            [
                T.Resize(self.resize_size, interpolation=_INTERPOLATIONS[self.interpolation], antialias=True),
                T.CenterCrop(self.crop_size),
                T.ToImage(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for the cache key and the saved model)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            interpolation=str(data["interpolation"]),
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        )

    @classmethod
    def from_torchvision(cls, weights: Any) -> Preprocessing:
        """From a torchvision weights enum entry, reading its ``transforms()`` preset."""
        preset = weights.transforms()
        crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
        resize = preset.resize_size[0] if isinstance(preset.resize_size, (list, tuple)) else preset.resize_size
        return cls(
            crop_size=int(crop),
            resize_size=int(resize),
            interpolation=InterpolationMode(preset.interpolation).value,
            mean=tuple(float(v) for v in preset.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in preset.std),  # type: ignore[arg-type]
        )

    @classmethod
    def from_timm(cls, pretrained_cfg: Any) -> Preprocessing:
        """From a timm pretrained config (``PretrainedCfg`` or its dict), as timm's eval transform does."""
        cfg = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.to_dict()
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        crop_pct = float(cfg.get("crop_pct") or 0.875)
        interpolation = cfg.get("interpolation") or "bicubic"
        return cls(
            crop_size=size,
            resize_size=math.floor(size / crop_pct),
            interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
            mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        )
