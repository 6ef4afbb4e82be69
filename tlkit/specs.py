"""The frozen records plugins register, and the values that flow between the stages of a run.

A registry entry says everything tlkit needs to know about a backbone, data set loader or head
without building it: its name, what builds it, what options it takes (a dataclass, so defaults,
types and help come from the plugin's own declaration), and which plugin gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tlkit.preprocessing import Preprocessing
from tlkit.weights import WeightsRequest


@dataclass(frozen=True)
class NoOptions:
    """Options type for an entry that takes none."""


@dataclass(frozen=True)
class BuiltBackbone:
    """What a backbone builder returns.

    ``model`` maps a normalised image batch ``(N, 3, H, W)`` to features ``(N, D)``.
    ``weights_id`` identifies the weights exactly (the sha256 of the file, or ``"random"``); the
    feature cache keys on it, so two different weights files never share features.
    ``saved_with_run`` says the engine must keep the model's weights in the run directory because
    building again from the same request would not give them back (random initialisation, weights
    changed after loading). Left at ``None`` it means exactly "``weights_id`` is ``"random"``".
    """

    model: torch.nn.Module
    weights_id: str
    weights_path: Path | None = None
    saved_with_run: bool | None = None

    def __post_init__(self) -> None:
        if self.saved_with_run is None:
            object.__setattr__(self, "saved_with_run", self.weights_id == "random")


@dataclass(frozen=True)
class BackboneSpec:
    """A registered feature extractor.

    ``build(request, options)`` receives the parsed ``backbone.weights`` as a
    :class:`~tlkit.WeightsRequest` (``kind`` ``"pretrained"``: the default weights, ``"random"``:
    random initialisation, ``"file"``: the file at ``request.path``) and an instance of ``options``
    (a dataclass type). ``preprocessing`` is a record or a zero-argument callable returning one, so
    catalogues of many models stay cheap to register. ``weights_available()`` says whether the
    default pretrained weights are on this machine (``tlkit backbones`` shows ``?`` without it).
    """

    name: str
    build: Callable[[WeightsRequest, Any], BuiltBackbone]
    preprocessing: Preprocessing | Callable[[], Preprocessing]
    feature_dim: int | None = None
    description: str = ""
    options: type = NoOptions
    weights_available: Callable[[], bool] | None = None
    hidden: bool = False
    plugin: str = ""

    def resolve_preprocessing(self) -> Preprocessing:
        """The preprocessing record, computing it if the plugin registered a callable."""
        pre = self.preprocessing
        return pre if isinstance(pre, Preprocessing) else pre()


class Sample(NamedTuple):
    """One labelled image file."""

    path: Path
    label: int


@dataclass(frozen=True)
class LoadedDataset:
    """What a data set loader returns: class names and the labelled files of each split.

    ``splits`` holds at least ``"train"`` and ``"test"``. ``notes`` are short lines shown in the
    run summary (for example how many non-image files were skipped).
    """

    classes: tuple[str, ...]
    splits: Mapping[str, Sequence[Sample]]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set loader: ``load(options) -> LoadedDataset``."""

    name: str
    load: Callable[[Any], LoadedDataset]
    description: str = ""
    options: type = NoOptions
    plugin: str = ""


@dataclass(frozen=True)
class Features:
    """Feature vectors ``x`` (N, D) float32 with integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class FitContext:
    """What a head's ``fit`` gets besides the training features.

    ``monitor`` (the test features) is only for progress reports at ``report`` time: a head must
    never choose anything by it. ``report(epoch, metrics)`` records one point of the training curve.
    """

    num_classes: int
    seed: int
    monitor: Features | None = None
    report: Callable[[int, Mapping[str, float]], None] = lambda epoch, metrics: None


@dataclass(frozen=True)
class TrainedHead:
    """What a head's ``fit`` returns: a module mapping features (N, D) to logits (N, C)."""

    module: torch.nn.Module
    history: Sequence[Mapping[str, float]] = field(default_factory=tuple)


@dataclass(frozen=True)
class HeadSpec:
    """A registered head.

    ``fit(train, options, ctx) -> TrainedHead`` trains it; ``load(tensors, options)`` rebuilds the
    module from the tensors of its saved ``state_dict`` so a run directory can be used later.
    """

    name: str
    fit: Callable[[Features, Any, FitContext], TrainedHead]
    load: Callable[[Mapping[str, torch.Tensor], Any], torch.nn.Module]
    description: str = ""
    options: type = NoOptions
    plugin: str = ""
