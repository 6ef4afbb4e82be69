"""The frozen records plugins register, and the values that flow between the stages of a run.

A registry entry says everything tlkit needs to know about a backbone, data set loader or head
without building it: its name, what builds it, what options it takes (a dataclass, so defaults,
types and help come from the plugin's own declaration), and which plugin gave it.

The specs are generic over that options dataclass (``BackboneSpec[MyOptions]``, inferred from what
``build``/``load``/``fit`` take), so a call from the engine into a plugin is type-checked: the
options handed to ``build`` are the ones ``options`` declares. Once registered, the engine knows
them only as :data:`PluginOptions` (some dataclass instance, validated against ``spec.options``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeAlias, TypeVar

import torch

from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.weights_request import WeightsRequest

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

OptionsT = TypeVar("OptionsT", bound="DataclassInstance")
PluginOptions: TypeAlias = "DataclassInstance"

# What plugins hand tlkit as data rather than calls: saved as JSON, so typed as JSON, never ``Any``.
JSONValue: TypeAlias = "None | bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue]"
# A head's constructor settings (``TrainedHead.config``, handed back to ``HeadSpec.build``): flat
# scalars, so ``int(config["dim"])`` type-checks in a plugin and a saved file cannot smuggle in more.
ConfigValue: TypeAlias = "bool | int | float | str"
HeadConfig: TypeAlias = "Mapping[str, ConfigValue]"
"""A registered plugin's options as the engine holds them: an instance of the dataclass its spec declares."""


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
class BackboneSpec(Generic[OptionsT]):
    """A registered feature extractor.

    ``build(request, options)`` receives the parsed ``backbone.weights`` as a
    :class:`~tlkit.WeightsRequest` (``kind`` ``"pretrained"``: the default weights, ``"random"``:
    random initialisation, ``"file"``: the file at ``request.path``) and an instance of ``options``
    (a dataclass type). ``preprocessing`` is a record or a zero-argument callable returning one, so
    catalogues of many models stay cheap to register. ``weights_available()`` says whether the
    default pretrained weights are on this machine (``tlkit backbones`` shows ``?`` without it).
    """

    name: str
    build: Callable[[WeightsRequest, OptionsT], BuiltBackbone]
    preprocessing: Preprocessing | Callable[[], Preprocessing]
    feature_dim: int | None = None
    description: str = ""
    options: type[OptionsT] = NoOptions  # type: ignore[assignment]  # no options declared: build takes a NoOptions
    weights_available: Callable[[], bool] | None = None
    hidden: bool = False
    plugin: str = ""
    # What people choose a model by, known without building it (``tlkit backbones`` shows it): a
    # zero-argument callable returning any of ``input_size`` (pixels), ``num_params``,
    # ``pretrained_tag`` and ``license``; called only when listing.
    card: Callable[[], Mapping[str, JSONValue]] | None = None

    def resolve_preprocessing(self) -> Preprocessing:
        """The preprocessing record, computing it if the plugin registered a callable."""
        pre = self.preprocessing
        return pre if isinstance(pre, Preprocessing) else pre()


@dataclass(frozen=True)
class ShardMember:
    """Where an image's bytes sit when they are not a file of their own: a member of a tar shard.

    ``shard`` is the shard's path or URL (as the ``webdataset`` package opens it), ``name`` the
    member's name inside it. ``sha256`` is the hash of the member's bytes, computed when the shard
    was listed: the feature cache keys on it, exactly as it keys a file on the file's bytes.
    """

    shard: str
    name: str
    sha256: str


class Sample(NamedTuple):
    """One labelled image: a file, or (``member`` set) the bytes of a member of a tar shard.

    For a shard member ``path`` is only a name to show (``<shard>/<member name>``), never opened.
    """

    path: Path
    label: int
    member: ShardMember | None = None


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
class DatasetSpec(Generic[OptionsT]):
    """A registered data set loader: ``load(options) -> LoadedDataset``."""

    name: str
    load: Callable[[OptionsT], LoadedDataset]
    description: str = ""
    options: type[OptionsT] = NoOptions  # type: ignore[assignment]  # no options declared: load takes a NoOptions
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
    """What a head's ``fit`` returns: a module mapping features (N, D) to logits (N, C).

    ``config`` holds the module's constructor settings (JSON-able): they are saved in the
    metadata of ``head.safetensors`` and handed to ``HeadSpec.build`` to rebuild the module, so a
    head never has to guess its shape back from tensors. ``choices`` are what the head decided
    while fitting (an L2 strength, a k, the epoch it kept; JSON-able, numbers or short lists of
    them) and ``notes`` say them in words; the run shows both in its summary and saves them in
    ``metrics.json`` and ``model.json``.
    """

    module: torch.nn.Module
    history: Sequence[Mapping[str, float]] = field(default_factory=tuple)
    config: HeadConfig = field(default_factory=dict)
    choices: Mapping[str, JSONValue] = field(default_factory=dict)
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class HeadSpec(Generic[OptionsT]):
    """A registered head.

    ``fit(train, options, ctx) -> TrainedHead`` trains it. A saved head is rebuilt by
    ``build(config)`` (the ``TrainedHead.config`` saved with it) followed by loading its
    ``state_dict``; a head without ``build`` gives ``load(tensors, options)`` instead, which
    rebuilds the module from the saved tensors themselves.

    ``from_classifier(layer)`` (optional) takes a trained ``nn.Linear`` from features to logits
    and returns it as this head's :class:`TrainedHead` (its ``config`` the one ``build`` takes).
    Fine-tuning trains such a layer with the backbone and hands it over this way, so the head's
    plugin alone says how it is saved and rebuilt; only heads that give it can finish a fine-tuning run.
    """

    name: str
    fit: Callable[[Features, OptionsT, FitContext], TrainedHead]
    load: Callable[[Mapping[str, torch.Tensor], OptionsT], torch.nn.Module] | None = None
    description: str = ""
    options: type[OptionsT] = NoOptions  # type: ignore[assignment]  # no options declared: fit takes a NoOptions
    plugin: str = ""
    build: Callable[[HeadConfig], torch.nn.Module] | None = None
    from_classifier: Callable[[torch.nn.Linear], TrainedHead] | None = None
