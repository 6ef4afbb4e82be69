"""tlkit: transfer learning on small image data sets, with plugins for backbones, data sets and heads.

The names in ``__all__`` (and the modules ``tlkit.backbones``, ``tlkit.errors``, ``tlkit.testing``)
are the public API plugins may rely on; everything else, and all of ``tlkit_plugins``, may change.

The public names are imported on first use (PEP 562), so ``import tlkit`` (and so ``tlkit --help``)
does not import torch; ``from tlkit import BackboneSpec`` works as before.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from tlkit import errors
from tlkit.errors import DataError, RecipeError, TlkitError, WeightsError
from tlkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from tlkit import backbones
    from tlkit.api import Model
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
    if name == "backbones":  # the plugin authors' building blocks (imports torch)
        value: Any = importlib.import_module("tlkit.backbones")
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"backbones"})


def load(run_dir: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """A finished run directory as a model: ``tlkit.load(run).predict([...])`` (see :mod:`tlkit.api`)."""
    from tlkit.api import load as load_run

    return load_run(run_dir, device=device)


__all__ = [
    "BackboneSpec",
    "BuiltBackbone",
    "DataError",
    "DatasetSpec",
    "Features",
    "FitContext",
    "HeadSpec",
    "LoadedDataset",
    "NoOptions",
    "Preprocessing",
    "RecipeError",
    "Sample",
    "TlkitError",
    "TrainedHead",
    "WeightsError",
    "WeightsRequest",
    "__version__",
    "backbones",
    "errors",
    "hookimpl",
    "load",
]
