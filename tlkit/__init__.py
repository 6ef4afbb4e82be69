"""tlkit: transfer learning on small image data sets, with plugins for backbones, data sets and heads."""

import os
from typing import TYPE_CHECKING

from tlkit.hookspecs import hookimpl
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

if TYPE_CHECKING:
    from tlkit.api import Model

__version__ = "0.1.0"


def load(run_dir: "str | os.PathLike[str]", *, device: str = "cpu") -> "Model":
    """A finished run directory as a model: ``tlkit.load(run).predict([...])`` (see :mod:`tlkit.api`)."""
    from tlkit.api import load as load_run

    return load_run(run_dir, device=device)


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
    "load",
]
