"""tlkit: transfer learning on small image data sets, with plugins for backbones, data sets and heads."""

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

__version__ = "0.1.0"

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
