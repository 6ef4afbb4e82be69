"""``model.json``: what a run needs to rebuild its model, as one typed and versioned record.

:class:`RunManifest` is written by the write stage (:mod:`tlkit.run.write`, through
:meth:`RunManifest.to_dict`) and read by everything that uses a saved run (``tlkit.load``,
``tlkit predict``, ``tlkit export``, ``tlkit features``) through :func:`read`, and nowhere else: no
module looks into the JSON by key, so a renamed field is one change here and a wrong value is
refused in one place, in one line naming the file and the key.

Formats: ``format_version`` 2 is the current, nested layout (``backbone``, ``pipeline``,
``features``, ``head``). Files written by tlkit 0.1.0 have no ``format_version`` and are format 1
(flat keys such as ``weights_sha256`` and ``head_options``); :func:`migrate` turns any older format
into the current one, so a 0.1.0 run directory still loads (``tests/data/run-0.1.0`` is such a run,
kept as it was written). A file from a newer tlkit is refused with the advice to upgrade. The
layout is documented in ``docs/run-directory.md``; a test fails when a field is missing there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from tlkit.errors import RunError
from tlkit.extract.pipeline import ImagePipeline
from tlkit.util.regular_files import UnsafeFile, read_regular

FILE = "model.json"
FORMAT_VERSION = 2
MAX_BYTES = 4 * 2**20  # a run's model.json is a few KB (10,000 class names stay under 1 MiB): a larger file is not one
AGAIN = "run the recipe again"

JSONValue: TypeAlias = "str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]"
JSONObject: TypeAlias = "dict[str, JSONValue]"


def plain_json(value: Mapping[str, object]) -> JSONObject:
    """A plugin's mapping (``TrainedHead.choices``: any ``Sequence``/``Mapping`` nesting) as plain JSON, checked
    here (finite numbers, string keys) so that what is written is exactly what a reader gets back."""
    result: JSONObject = json.loads(json.dumps(dict(value), allow_nan=False))
    return result


@dataclass(frozen=True)
class BackboneRecord:
    """Which backbone, built with which options and weights; the weights are checked against ``weights_sha256`` on load."""

    name: str
    options: JSONObject = field(default_factory=dict)  # the recipe's backbone section without name and weights
    weights: str | None = None  # the recipe's value: None (default pretrained), "none" (random) or a path
    weights_file: str | None = None  # the weights file that was loaded, resolved to an absolute path
    weights_sha256: str = "random"  # BuiltBackbone.weights_id: a file's sha256, a weights digest, or "random"
    in_run: bool = False  # the weights travel in the run as backbone.safetensors (random or fine-tuned)


@dataclass(frozen=True)
class FeatureRecord:
    """The features the head was trained on: their size, the extraction batch size, the rest of their cache key."""

    dim: int
    batch_size: int = 32
    cache_extra: dict[str, str] = field(default_factory=dict)  # decoder, runtime and its precision (tlkit.run.stages.cache_extra)


@dataclass(frozen=True)
class HeadRecord:
    """The head plugin, its options, and what it chose while fitting (``TrainedHead.choices``)."""

    name: str
    options: JSONObject = field(default_factory=dict)  # the recipe's head section without name
    choices: JSONObject = field(default_factory=dict)


@dataclass(frozen=True)
class RunManifest:
    """Everything in ``model.json``: rebuild backbone + head and decode images exactly as the run did."""

    backbone: BackboneRecord
    pipeline: ImagePipeline
    features: FeatureRecord
    head: HeadRecord
    classes: tuple[str, ...]
    tlkit_version: str
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> JSONObject:
        """The ``model.json`` object (format :data:`FORMAT_VERSION`), version first."""
        b, f, h = self.backbone, self.features, self.head
        return {
            "format_version": self.format_version,
            "tlkit_version": self.tlkit_version,
            "classes": list(self.classes),
            "backbone": {
                "name": b.name, "options": dict(b.options), "weights": b.weights, "weights_file": b.weights_file,
                "weights_sha256": b.weights_sha256, "in_run": b.in_run,
            },
            "pipeline": self.pipeline.to_dict(),
            "features": {"dim": f.dim, "batch_size": f.batch_size, "cache_extra": dict(f.cache_extra)},
            "head": {"name": h.name, "options": dict(h.options), "choices": dict(h.choices)},
        }

    def to_json(self) -> str:
        """The text of ``model.json``."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def read(path: Path | str) -> RunManifest:
    """The manifest in ``path`` (any format tlkit ever wrote), checked field by field; :class:`RunError` otherwise."""
    path = Path(path)
    raw = _load(path)
    version = _version(raw, path)
    if version == FORMAT_VERSION:
        return parse(raw, path)
    try:
        return parse(migrate(raw, version), path)
    except RunError as exc:  # the key is named as in the current format, which the reader may not see in the file
        raise RunError(f"{exc} (format {version}, keys named as after migrating to format {FORMAT_VERSION}: see docs/run-directory.md)") from None


def migrate(raw: Mapping[str, JSONValue], from_version: int) -> JSONObject:
    """``raw`` (a ``model.json`` object of format ``from_version``) in the current format.

    Only moves and renames keys, filling what old formats lacked with what their readers assumed;
    :func:`parse` checks the result. Format 1 (tlkit 0.1.0, no ``format_version``) had flat keys,
    ``backbone_options``/``head_options`` holding ``name`` (and ``weights``), and, in its earliest
    runs, no ``pipeline`` (decoding was the default), no ``backbone_in_run`` (only random weights
    travelled with a run) and no ``head_choices``.
    """
    data: JSONObject = dict(raw)
    if from_version == 1:
        data = _from_format_1(data)
    data["format_version"] = FORMAT_VERSION
    return data


def _from_format_1(old: JSONObject) -> JSONObject:
    extract = old.get("extract")
    extract = extract if isinstance(extract, dict) else {}
    pipeline = old.get("pipeline")
    if pipeline is None:
        precision = extract.get("precision", "fp32")
        pipeline = {"on_bad_image": "skip", "background": [255, 255, 255], "preprocessing": old.get("preprocessing"), "precision": precision, "decoder": "reference"}
    sha = old.get("weights_sha256")
    return {
        "tlkit_version": old.get("tlkit_version", "0.1.0"),
        "classes": old.get("classes"),
        "backbone": {
            "name": old.get("backbone"),
            "options": _without(old.get("backbone_options"), "name", "weights"),
            "weights": old.get("backbone_weights"),
            "weights_file": old.get("backbone_weights_file"),
            "weights_sha256": sha,
            "in_run": old.get("backbone_in_run", sha == "random"),
        },
        "pipeline": pipeline,
        "features": {"dim": old.get("feature_dim"), "batch_size": extract.get("batch_size", 32), "cache_extra": old.get("cache_extra") or {}},
        "head": {"name": old.get("head"), "options": _without(old.get("head_options"), "name"), "choices": old.get("head_choices") or {}},
    }


def _without(value: JSONValue, *keys: str) -> JSONValue:
    if value is None:
        return {}
    return {k: v for k, v in value.items() if k not in keys} if isinstance(value, dict) else value


def parse(data: Mapping[str, JSONValue], path: Path) -> RunManifest:
    """A current-format object as a :class:`RunManifest`; the first wrong field is one :class:`RunError` line."""
    top = _Fields(data, path)
    backbone, features, head = top.section("backbone"), top.section("features"), top.section("head")
    return RunManifest(
        format_version=top.integer("format_version", minimum=1),
        tlkit_version=top.text("tlkit_version"),
        classes=top.texts("classes"),
        backbone=BackboneRecord(
            name=backbone.text("name"),
            options=backbone.object("options"),
            weights=backbone.optional_text("weights"),
            weights_file=backbone.optional_text("weights_file"),
            weights_sha256=backbone.text("weights_sha256"),
            in_run=backbone.flag("in_run"),
        ),
        pipeline=top.pipeline("pipeline"),
        features=FeatureRecord(
            dim=features.integer("dim", minimum=1),
            batch_size=features.integer("batch_size", minimum=1),
            cache_extra=features.strings("cache_extra"),
        ),
        head=HeadRecord(name=head.text("name"), options=head.object("options"), choices=head.object("choices")),
    )


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _load(path: Path) -> JSONObject:
    try:
        data = json.loads(read_regular(path, MAX_BYTES).decode("utf-8"), parse_constant=_refuse_constant)
    except UnsafeFile as exc:  # a link to /dev/zero, a FIFO, a file larger than any run writes
        raise RunError(f"{path} {exc}; it is not a tlkit model.json, {AGAIN}") from None
    except FileNotFoundError:
        raise RunError(f"{path} is missing; the run directory is incomplete, {AGAIN}") from None
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RunError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); {AGAIN}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} holds a JSON {type(data).__name__}, not the object tlkit writes; {AGAIN}")
    return data


def _version(raw: Mapping[str, JSONValue], path: Path) -> int:
    version = raw.get("format_version", 1)  # tlkit 0.1.0 wrote no version: format 1
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunError(f"{path}: 'format_version' must be a whole number >= 1, not {version!r}; {AGAIN}")
    if version > FORMAT_VERSION:
        raise RunError(f"{path} is format {version}, written by a newer tlkit (this one reads formats 1 to {FORMAT_VERSION}); upgrade tlkit, or {AGAIN} with this one")
    return version


class _Fields:
    """Typed access to one JSON object of ``model.json``; a wrong value names the file and the key's full path."""

    def __init__(self, data: Mapping[str, JSONValue], path: Path, prefix: str = "") -> None:
        self.data, self.path, self.prefix = data, path, prefix

    def _get(self, key: str) -> JSONValue:
        if key not in self.data:
            raise self._wrong(key, "is missing")
        return self.data[key]

    def _wrong(self, key: str, problem: str) -> RunError:
        return RunError(f"{self.path}: '{self.prefix}{key}' {problem}; the file is damaged or not tlkit's, {AGAIN}")

    def _kind(self, key: str, value: JSONValue, expected: str) -> RunError:
        shown = json.dumps(value)[:40]
        return self._wrong(key, f"must be {expected}, not {shown}")

    def section(self, key: str) -> _Fields:
        return _Fields(self.object(key), self.path, f"{self.prefix}{key}.")

    def object(self, key: str) -> JSONObject:
        value = self._get(key)
        if not isinstance(value, dict):
            raise self._kind(key, value, "an object")
        return value

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._kind(key, value, "a non-empty string")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise self._kind(key, value, "a string or null")
        return value

    def integer(self, key: str, *, minimum: int) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self._kind(key, value, f"a whole number >= {minimum}")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._kind(key, value, "true or false")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self._kind(key, value, "a non-empty list of non-empty strings")
        return tuple(str(v) for v in value)

    def strings(self, key: str) -> dict[str, str]:
        value = self.object(key)
        if not all(isinstance(v, str) for v in value.values()):
            raise self._kind(key, value, "an object of strings")
        return {k: str(v) for k, v in value.items()}

    def pipeline(self, key: str) -> ImagePipeline:
        value = self.object(key)
        try:
            return ImagePipeline.from_dict(value)
        except KeyError as exc:
            raise self._wrong(f"{key}.{exc.args[0]}", "is missing") from None
        except (TypeError, ValueError) as exc:
            raise self._wrong(key, f"is not an image pipeline ({str(exc)[:80]})") from None

