"""tlkit: transfer learning on small image data sets, with plugins for backbones, data sets and heads.

The names in ``__all__`` (and the modules ``tlkit.backbones``, ``tlkit.errors``, ``tlkit.fitting``, ``tlkit.testing``)
are the public API plugins may rely on; everything else, and all of ``tlkit_plugins``, may change.

``tlkit.fit`` and ``tlkit.compare`` train from Python as ``tlkit run`` and ``tlkit compare`` do
(:mod:`tlkit.api`), with recipes built by ``tlkit.make_recipe`` through the YAML validator.

The public names are imported on first use (PEP 562), so ``import tlkit`` (and so ``tlkit --help``)
does not import torch; ``from tlkit import BackboneSpec`` works as before.

``PLUGIN_API_VERSION`` is the version of that API (see ``docs/plugin-api.md`` and ``CHANGELOG.md``):
it goes up with every change that can break a plugin written for the one before.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from tlkit import errors
from tlkit.contract.hookspecs import hookimpl
from tlkit.contract.plugin_api import PLUGIN_API_VERSION
from tlkit.errors import DataError, RecipeError, TlkitError, WeightsError

if TYPE_CHECKING:
    from tlkit import backbones
    from tlkit.api.recipes import make_recipe
    from tlkit.api.results import CompareResult, FitResult
    from tlkit.api.runs import compare, fit
    from tlkit.contract.observer import Observer, ObserverSpec
    from tlkit.contract.preprocessing import Preprocessing
    from tlkit.contract.specs import (
        BackboneSpec,
        BuiltBackbone,
        DatasetSpec,
        Features,
        FitContext,
        HeadSpec,
        LoadedDataset,
        NoOptions,
        Sample,
        ShardMember,
        TrainedHead,
    )
    from tlkit.contract.weights_request import WeightsRequest
    from tlkit.saved.model import Model
    from tlkit.sources.archives import fetch as fetch_archive
    from tlkit.sources.holdout import holdout_split
    from tlkit.sources.image_files import EXTENSIONS as IMAGE_EXTENSIONS
    from tlkit.sources.image_files import FoundFiles, walk_images
    from tlkit.sources.image_tables import read_rows as read_image_table
    from tlkit.sources.image_tables import read_schema as image_table_schema
    from tlkit.sources.shards import CLASSES_FILE as SHARD_CLASSES_FILE
    from tlkit.sources.shards import ShardGroup
    from tlkit.sources.shards import expand as expand_shards
    from tlkit.sources.shards import stream as read_shards

__version__ = "0.2.0"

_LAZY = {
    "Preprocessing": "tlkit.contract.preprocessing",
    "Observer": "tlkit.contract.observer",
    "ObserverSpec": "tlkit.contract.observer",
    "BackboneSpec": "tlkit.contract.specs",
    "BuiltBackbone": "tlkit.contract.specs",
    "DatasetSpec": "tlkit.contract.specs",
    "Features": "tlkit.contract.specs",
    "FitContext": "tlkit.contract.specs",
    "HeadSpec": "tlkit.contract.specs",
    "LoadedDataset": "tlkit.contract.specs",
    "NoOptions": "tlkit.contract.specs",
    "Sample": "tlkit.contract.specs",
    "TrainedHead": "tlkit.contract.specs",
    "WeightsRequest": "tlkit.contract.weights_request",
    "ShardMember": "tlkit.contract.specs",
    # Data set helpers the built-in loaders use, as "module:name" where the public name differs.
    "FoundFiles": "tlkit.sources.image_files",
    "IMAGE_EXTENSIONS": "tlkit.sources.image_files:EXTENSIONS",
    "walk_images": "tlkit.sources.image_files",
    "fetch_archive": "tlkit.sources.archives:fetch",
    "SHARD_CLASSES_FILE": "tlkit.sources.shards:CLASSES_FILE",
    "ShardGroup": "tlkit.sources.shards",
    "expand_shards": "tlkit.sources.shards:expand",
    "read_shards": "tlkit.sources.shards:stream",
    # The Python front (tlkit.api): the CLI's run and compare as calls, and recipes built in Python.
    "fit": "tlkit.api.runs",
    "compare": "tlkit.api.runs",
    "make_recipe": "tlkit.api.recipes",
    "FitResult": "tlkit.api.results",
    "CompareResult": "tlkit.api.results",
    # Since 0.3.0: the seeded holdout rule every splitting loader shares, and images stored in Arrow/Parquet tables.
    "holdout_split": "tlkit.sources.holdout",
    "image_table_schema": "tlkit.sources.image_tables:read_schema",
    "read_image_table": "tlkit.sources.image_tables:read_rows",
}


def __getattr__(name: str) -> Any:
    if name == "backbones":  # the plugin authors' building blocks (imports torch)
        value: Any = importlib.import_module("tlkit.backbones")
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
        module, _, attr = module.partition(":")
        value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"backbones"})


def load(run_dir: str | os.PathLike[str], *, device: str = "cpu") -> Model:
    """A finished run directory as a model: ``tlkit.load(run).predict([...])`` (see :mod:`tlkit.saved.model`)."""
    from tlkit.saved.model import load as load_run

    return load_run(run_dir, device=device)


__all__ = [
    "IMAGE_EXTENSIONS",
    "PLUGIN_API_VERSION",
    "SHARD_CLASSES_FILE",
    "BackboneSpec",
    "BuiltBackbone",
    "CompareResult",
    "DataError",
    "DatasetSpec",
    "Features",
    "FitContext",
    "FitResult",
    "FoundFiles",
    "HeadSpec",
    "LoadedDataset",
    "NoOptions",
    "Observer",
    "ObserverSpec",
    "Preprocessing",
    "RecipeError",
    "Sample",
    "ShardGroup",
    "ShardMember",
    "TlkitError",
    "TrainedHead",
    "WeightsError",
    "WeightsRequest",
    "__version__",
    "backbones",
    "compare",
    "errors",
    "expand_shards",
    "fetch_archive",
    "fit",
    "holdout_split",
    "hookimpl",
    "image_table_schema",
    "load",
    "make_recipe",
    "read_image_table",
    "read_shards",
    "walk_images",
]
