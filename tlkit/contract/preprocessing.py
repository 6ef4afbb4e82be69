"""How a backbone wants its images: a frozen record, built from the library that defines it.

Backbones never hard-code their preprocessing: torchvision models derive it from their weights
enum (``weights.transforms()``), timm models from ``timm.data.resolve_data_config``. The record is
also part of the feature-cache key and of the saved ``model.json``, so it is plain data; its
``transform()`` is rebuilt from that data by the same library: a timm record (``pipeline="timm"``)
through timm's own ``create_transform``, so every timm crop mode (``center``, ``squash``,
``border``) gives exactly timm's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

# torchvision is imported where a transform is built, not here: ``import torchvision`` pulls in
# torchvision.models and torch._dynamo (about 2.5 s), which a run whose features are all cached never needs.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # torchvision's InterpolationMode values
PIPELINES = ("torchvision", "timm")
CROP_MODES = ("center", "squash", "border")
# Bounds on the sizes: far above any backbone's input (timm's largest is 1024), far below what would make
# decoding one image allocate gigabytes (a damaged or hostile model.json, a plugin's mistake).
MAX_CROP_SIZE = 4096
MAX_RESIZE_SIZE = 8192
# Fields left out of to_dict() at these values, so records saved before they existed keep their cache keys.
_OPTIONAL = {"pipeline": "torchvision", "crop_mode": "center", "crop_pct": None}


def _check_sizes(crop_size: int, resize_size: int) -> None:
    for name, value, most in (("crop_size", crop_size, MAX_CROP_SIZE), ("resize_size", resize_size, MAX_RESIZE_SIZE)):
        if not 1 <= value <= most:
            raise ValueError(f"{name} must be a whole number from 1 to {most}, not {value!r}")


@dataclass(frozen=True)
class Preprocessing:
    """Resize, crop ``crop_size`` x ``crop_size``, scale to [0, 1], normalise with ``mean`` / ``std``.

    ``pipeline="torchvision"``: resize the shorter side to ``resize_size`` and centre-crop (what
    torchvision's weight presets do). ``pipeline="timm"``: timm's eval transform with ``crop_pct``
    and ``crop_mode`` (``center``: shorter side to ``resize_size``, then crop; ``squash``: both
    sides to ``resize_size``, ignoring the aspect ratio; ``border``: the longer side to
    ``resize_size``, then pad with the mean colour); ``resize_size`` is ``floor(crop_size / crop_pct)``.
    """

    crop_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pipeline: str = "torchvision"
    crop_mode: str = "center"
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        _check_sizes(self.crop_size, self.resize_size)
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or not all(v > 0 for v in self.std):
            raise ValueError(f"mean and std must be finite numbers, std above 0, not {list(self.mean)} / {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, not {self.interpolation!r}")
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {list(PIPELINES)}, not {self.pipeline!r}")
        if self.crop_mode not in CROP_MODES or (self.pipeline == "torchvision" and self.crop_mode != "center"):
            raise ValueError(f"crop_mode must be one of {list(CROP_MODES)} ('center' for the torchvision pipeline), not {self.crop_mode!r}")
        if self.pipeline == "timm":
            if self.crop_pct is None or not 0 < self.crop_pct <= 1:
                raise ValueError(f"the timm pipeline needs crop_pct in (0, 1], not {self.crop_pct!r}")
            if self.resize_size != math.floor(self.crop_size / self.crop_pct):
                raise ValueError(f"resize_size {self.resize_size} != floor(crop_size / crop_pct) = {math.floor(self.crop_size / self.crop_pct)}")
        elif self.crop_pct is not None:
            raise ValueError("crop_pct belongs to the timm pipeline; the torchvision pipeline uses resize_size")
        if self.resize_size < self.crop_size and self.crop_mode == "center":
            raise ValueError("resize_size must be at least crop_size")

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """A transform from a PIL RGB image to a normalised float tensor (3, crop_size, crop_size)."""
        if self.pipeline == "timm":
            from timm.data import create_transform

            return create_transform(  # type: ignore[no-any-return]
                input_size=(3, self.crop_size, self.crop_size),
                is_training=False,
                interpolation=self.interpolation,
                mean=self.mean,
                std=self.std,
                crop_pct=self.crop_pct,
                crop_mode=self.crop_mode,
            )
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import v2 as T

        return T.Compose(
            [
                T.Resize(self.resize_size, interpolation=InterpolationMode(self.interpolation), antialias=True),
                T.CenterCrop(self.crop_size),
                T.ToImage(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for the cache key and the saved model)."""
        data: dict[str, Any] = {
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        data.update({k: getattr(self, k) for k, default in _OPTIONAL.items() if getattr(self, k) != default})
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            crop_size=int(data["crop_size"]),
            resize_size=int(data["resize_size"]),
            interpolation=str(data["interpolation"]),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
            pipeline=str(data.get("pipeline", "torchvision")),
            crop_mode=str(data.get("crop_mode", "center")),
            crop_pct=None if data.get("crop_pct") is None else float(data["crop_pct"]),
        )

    @classmethod
    def from_torchvision(cls, weights: Any) -> Preprocessing:
        """From a torchvision weights enum entry, reading its ``transforms()`` preset."""
        from torchvision.transforms import InterpolationMode

        preset = weights.transforms()
        crop = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else preset.crop_size
        resize = preset.resize_size[0] if isinstance(preset.resize_size, (list, tuple)) else preset.resize_size
        return cls(
            crop_size=int(crop),
            resize_size=int(resize),
            interpolation=InterpolationMode(preset.interpolation).value,
            mean=_triple(preset.mean),
            std=_triple(preset.std),
        )

    @classmethod
    def from_timm(cls, pretrained_cfg: Any) -> Preprocessing:
        """From a timm pretrained config (``PretrainedCfg`` or its dict) via ``timm.data.resolve_data_config``."""
        from timm.data import resolve_data_config

        cfg = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else pretrained_cfg.to_dict()
        data = resolve_data_config({}, pretrained_cfg=dict(cfg))
        return cls.from_timm_data_config(data)

    @classmethod
    def from_timm_data_config(cls, data: Mapping[str, Any]) -> Preprocessing:
        """From the dict ``timm.data.resolve_data_config`` returns (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
        _, height, width = data["input_size"]
        if height != width:
            raise ValueError(f"tlkit crops square images; this timm config asks for {height}x{width}")
        crop_pct = float(data.get("crop_pct") or 0.875)
        return cls(
            crop_size=int(height),
            resize_size=math.floor(int(height) / crop_pct),
            interpolation=str(data.get("interpolation") or "bilinear"),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
            pipeline="timm",
            crop_mode=str(data.get("crop_mode") or "center"),
            crop_pct=crop_pct,
        )


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
