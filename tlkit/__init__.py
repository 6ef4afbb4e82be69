"""tlkit: transfer learning on small image data sets, with plugins for backbones, data sets and heads.

The public names are imported on first use (PEP 562), so ``import tlkit`` (and so ``tlkit --help``)
does not import torch; ``from tlkit import BackboneSpec`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tlkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from tlkit.preprocessing import Preprocessing
    from tlkit.specs import (
        BackboneSpec,
        BuiltBackbone,
        DatasetSpec,
        Features,
        FitContext,
        HeadSpec,
        LoadedDataset,
        NoOptions,
        Sample,
        TrainedHead,
    )
    from tlkit.weights import WeightsRequest

__version__ = "0.1.0"

_LAZY = {
    "Preprocessing": "tlkit.preprocessing",
    "BackboneSpec": "tlkit.specs",
    "BuiltBackbone": "tlkit.specs",
    "DatasetSpec": "tlkit.specs",
    "Features": "tlkit.specs",
    "FitContext": "tlkit.specs",
    "HeadSpec": "tlkit.specs",
    "LoadedDataset": "tlkit.specs",
    "NoOptions": "tlkit.specs",
    "Sample": "tlkit.specs",
    "TrainedHead": "tlkit.specs",
    "WeightsRequest": "tlkit.weights",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BackboneSpec",
    "BuiltBackbone",
    "DatasetSpec",
    "Features",
    "FitContext",
    "HeadSpec",
    "LoadedDataset",
    "NoOptions",
    "Preprocessing",
    "Sample",
    "TrainedHead",
    "WeightsRequest",
    "__version__",
    "hookimpl",
]
