"""tlkit: transfer learning on small image data sets, with plugins for backbones, data sets and heads.

The names in ``__all__`` (and the modules ``tlkit.backbones``, ``tlkit.errors``, ``tlkit.testing``)
are the public API plugins may rely on; everything else, and all of ``tlkit_plugins``, may change.
"""

from tlkit import backbones, errors
from tlkit.errors import DataError, RecipeError, TlkitError, WeightsError
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
]
