"""YAML recipe + ``--set`` overrides -> a validated, fully resolved :class:`Recipe`.

Everything is checked before any image is opened: unknown keys at any depth, wrong types, bad
numbers and unknown plugin names, each reported as one line naming the key path and suggesting
the closest valid name. Plugin options are validated against the dataclass the plugin declared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeAlias

import yaml
from annotated_types import Ge, Gt, Le

from tlkit.contract.options import describe_value as _describe
from tlkit.contract.options import validate_options
from tlkit.contract.plugin_manager import Plugins
from tlkit.contract.registry import Registry, SpecT
from tlkit.contract.specs import BackboneSpec, DatasetSpec, HeadSpec, OptionsT, PluginOptions
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import RecipeError, TlkitError, did_you_mean
from tlkit.extract.pipeline import ImageSettings
from tlkit.finetune.settings import AugmentSettings, FinetuneSettings
from tlkit.recipe.audit_settings import AuditSettings, audit_section, exclude_key
from tlkit.recipe.observers_section import ObserverChoice, observers_section
from tlkit.recipe.set_items import quoting_hint
from tlkit.recipe.yaml_loading import safe_load

MAX_DEPTH = 8


@dataclass(frozen=True)
class ExtractSettings:
    """How features are extracted (the ``extract:`` section)."""

    batch_size: Annotated[int, Gt(0), Le(4096)] = field(default=32, metadata={"help": "images per forward pass"})
    workers: Annotated[int, Ge(0), Le(64)] | None = field(
        default=None, metadata={"help": "decoding worker processes (null = chosen for this machine)"}
    )
    precision: Literal["fp32", "bf16", "fp16", "int8"] = field(
        default="fp32", metadata={"help": "precision of the forward pass (int8: calibrated, onnxruntime/openvino only)"}
    )
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "where the backbone runs"})
    cache: bool = field(default=True, metadata={"help": "reuse features from the feature cache"})
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = field(
        default="auto", metadata={"help": "what runs the forward pass (auto: the fastest installed runtime that agrees with torch)"}
    )
    decoder: Literal["auto", "reference", "fast"] = field(
        default="auto", metadata={"help": "reference: PIL + the backbone's transform; fast: simplejpeg + torch resizing (auto: fast where installed)"}
    )
    insist_precision: bool = field(default=False, metadata={"help": "run bf16/fp16 even on a CPU that can only emulate it (slow)"})


MOVED_TO_IMAGES = tuple(f.name for f in dataclasses.fields(ImageSettings))


@dataclass(frozen=True)
class Choice(Generic[SpecT, OptionsT]):
    """A plugin chosen by a recipe section: its spec and its validated options.

    Generic over both, so ``choice.spec.build(weights, choice.options)`` is type-checked: a
    ``Choice[BackboneSpec[O], O]`` holds options of exactly the type its spec's callables take.
    A recipe holds the registered specs, whose options the engine knows as :data:`PluginOptions`.
    """

    spec: SpecT
    options: OptionsT

    @property
    def name(self) -> str:
        return self.spec.name


BackboneChoice: TypeAlias = "Choice[BackboneSpec[PluginOptions], PluginOptions]"
DatasetChoice: TypeAlias = "Choice[DatasetSpec[PluginOptions], PluginOptions]"
HeadChoice: TypeAlias = "Choice[HeadSpec[PluginOptions], PluginOptions]"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe with every default filled in and every name resolved."""

    name: str
    seed: int
    dataset: DatasetChoice
    backbone: BackboneChoice
    weights: WeightsRequest
    extract: ExtractSettings
    head: HeadChoice
    source: Path | None = None
    images: ImageSettings = ImageSettings()
    mode: str = "extract"
    finetune: FinetuneSettings | None = None  # set when mode is "finetune"
    observers: tuple[ObserverChoice, ...] = ()  # run observers (tracking tools) the recipe turned on
    audit: AuditSettings = AuditSettings()
    exclude: Path | None = None  # dataset.exclude: images listed there are left out of every split

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe as plain data (saved in the run directory)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "dataset": {"name": self.dataset.name, **dataclasses.asdict(self.dataset.options), **({"exclude": str(self.exclude)} if self.exclude else {})},
            "images": self.images.to_dict(),
            "backbone": {"name": self.backbone.name, "weights": self.weights.to_value(), **dataclasses.asdict(self.backbone.options)},
            "extract": dataclasses.asdict(self.extract),
            "head": {"name": self.head.name, **dataclasses.asdict(self.head.options)},
            **({"mode": self.mode, "finetune": _lists(dataclasses.asdict(self.finetune))} if self.finetune is not None else {}),
            **({"observers": {o.name: o.to_dict() for o in self.observers}} if self.observers else {}),
            "audit": dataclasses.asdict(self.audit),
        }


_TOP_KEYS = ("name", "seed", "mode", "dataset", "images", "backbone", "extract", "head", "finetune", "observers", "audit")
_DEFAULT_PLUGIN = {"dataset": "imagefolder", "backbone": "resnet18", "head": "linear"}
def _check_depth(value: Any, path: str, depth: int = 0) -> None:
    """Refuse deep nesting, non-string keys and NUL characters (no path or name may hold one)."""
    if depth > MAX_DEPTH:
        raise RecipeError(f"'{path}' is nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(value, str) and "\x00" in value:
        raise RecipeError(f"'{path or 'the top level'}' contains a NUL character")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RecipeError(f"key {_describe(key)} under '{path or 'the top level'}' must be a string")
            if "\x00" in key:
                raise RecipeError(f"a key under '{path or 'the top level'}' contains a NUL character")
            _check_depth(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_depth(item, f"{path}[{index}]", depth + 1)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a recipe file with ``yaml.safe_load``; any problem is one line naming the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(f"recipe {path} cannot be read ({exc.strerror})") from None
    try:
        data = safe_load(text)  # yaml.safe_load, refusing alias bombs and duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RecipeError(f"recipe {path} is not valid YAML ({problem} at{where or ' unknown position'})") from None
    except RecursionError:
        raise RecipeError(f"recipe {path} is nested too deeply") from None
    if data is None:
        raise RecipeError(f"recipe {path} is empty; see recipes/hymenoptera.yaml for the format")
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections (dataset, backbone, head, ...), not a {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML scalars (``1e-3``, ``true``, ``null``)."""
    _check_depth(data, "")
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise RecipeError(f"--set '{item}' must look like dotted.key=value")
        try:
            value = safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            if quoting_hint(item):  # {test_fraction: without its 0.2}: an unquoted item cut by the shell
                raise RecipeError(f"--set '{item}' is cut short{quoting_hint(item)}") from None
            value = raw
        except RecursionError:
            raise RecipeError(f"--set {key}: the value is nested too deeply") from None
        _check_depth(value, key)
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {key}: '{'.'.join(parts[: depth + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _section(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"'{key}' must be a mapping of settings, not a {type(value).__name__} ({_describe(value)})")
    return dict(value)


def _choose(registry: Registry[SpecT], kind: str, section: dict[str, Any]) -> tuple[SpecT, dict[str, Any]]:
    name = section.pop("name", _DEFAULT_PLUGIN[kind])
    if not isinstance(name, str):
        raise RecipeError(f"'{kind}.name' must be a string (got {_describe(name)})")
    try:
        spec = registry.get(name)
    except TlkitError as exc:
        raise RecipeError(f"'{kind}.name': {exc}") from None
    return spec, section


def resolve(data: Mapping[str, Any], plugins: Plugins, *, default_name: str = "recipe", source: Path | None = None) -> Recipe:
    """Validate raw recipe data against the registries; every problem is a :class:`RecipeError`."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"a recipe must be a mapping of sections, not a {type(data).__name__}")
    _check_depth(data, "")
    for key in data:
        if key not in _TOP_KEYS:
            raise RecipeError(f"unknown key '{key}'{did_you_mean(str(key), _TOP_KEYS) or '; valid keys: ' + ', '.join(_TOP_KEYS)}")
    name = data.get("name", default_name)
    if not _plain_name(name):
        raise RecipeError(f"'name' must be a plain string of 1-100 characters usable in a folder name (got {_describe(name)})")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise RecipeError(f"'seed' must be a non-negative integer (got {_describe(seed)})")

    dataset_spec, dataset_data = _choose(plugins.datasets, "dataset", _section(data, "dataset"))
    exclude = exclude_key(dataset_data)
    _refuse_moved_keys(dataset_data)
    images = _image_settings(_section(data, "images"))
    backbone_spec, backbone_data = _choose(plugins.backbones, "backbone", _section(data, "backbone"))
    head_spec, head_data = _choose(plugins.heads, "head", _section(data, "head"))
    weights = WeightsRequest.parse(backbone_data.pop("weights", None))
    mode, finetune = finetune_section(data, head_spec)
    return Recipe(
        name=name,
        seed=seed,
        dataset=Choice(dataset_spec, validate_options(dataset_spec.options, dataset_data, "dataset", also_valid=("name",))),
        backbone=Choice(backbone_spec, validate_options(backbone_spec.options, backbone_data, "backbone", also_valid=("name", "weights"))),
        weights=weights,
        extract=validate_options(ExtractSettings, _section(data, "extract"), "extract"),
        head=Choice(head_spec, validate_options(head_spec.options, head_data, "head", also_valid=("name",))),
        source=source,
        images=images,
        mode=mode,
        finetune=finetune,
        observers=observers_section(data, plugins.observers),
        audit=audit_section(data.get("audit")),
        exclude=exclude,
    )


def _lists(value: Any) -> Any:
    """Tuples as lists, so the resolved recipe is plain YAML/JSON data."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def finetune_section(data: Mapping[str, Any], head: HeadSpec[PluginOptions]) -> tuple[str, FinetuneSettings | None]:
    """``mode`` and, in finetune mode, the validated ``finetune:`` section (its ``augment`` part checked key by key)."""
    mode = data.get("mode", "extract")
    if mode not in ("extract", "finetune"):
        raise RecipeError(f"'mode' must be extract or finetune (got {_describe(mode)}){did_you_mean(str(mode), ('extract', 'finetune'))}")
    section = _section(data, "finetune")
    if mode == "extract":
        if section:
            raise RecipeError("'finetune' settings are used only with 'mode: finetune'; add it or remove the finetune section")
        return mode, None
    if head.from_classifier is None:  # the head plugin must take the trained nn.Linear over (HeadSpec.from_classifier)
        raise RecipeError(
            f"'head.name': mode: finetune trains its own linear classifier, which head '{head.name}' cannot take over; remove head.name or set it to linear"
        )
    augment = validate_options(AugmentSettings, _section(section, "augment"), "finetune.augment")
    section.pop("augment", None)
    settings = validate_options(FinetuneSettings, section, "finetune", also_valid=("augment",))
    return mode, dataclasses.replace(settings, augment=augment)


def _plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name.strip()) <= 100
        and not name.startswith(".")
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


def _refuse_moved_keys(dataset_data: Mapping[str, Any]) -> None:
    """Recipes of tlkit 0.1 kept the decoding keys under ``dataset:``; say where they went."""
    for key in MOVED_TO_IMAGES:
        if key in dataset_data:
            raise RecipeError(f"'dataset.{key}' has moved to its own section: write it as 'images: {{{key}: ...}}' (images.{key})")


def _image_settings(data: dict[str, Any]) -> ImageSettings:
    settings = validate_options(ImageSettings, data, "images")
    return dataclasses.replace(settings, background=_colour(settings.background))


def _colour(value: Any) -> tuple[int, int, int]:
    """``[r, g, b]`` with 0-255 integers, or a colour name PIL knows (``white``, ``#808080``)."""
    usage = "use [r, g, b] with integers 0-255 or a name such as 'white' or '#808080'"
    if isinstance(value, str):
        from PIL import ImageColor

        try:
            rgb = ImageColor.getrgb(value)
        except ValueError:
            raise RecipeError(f"'images.background': unknown colour {_describe(value)}; {usage}") from None
        return (rgb[0], rgb[1], rgb[2])
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return (value[0], value[1], value[2])
    raise RecipeError(f"'images.background' must be a colour (got {_describe(value)}); {usage}")


def load_recipe(path: Path | str, plugins: Plugins, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate the recipe at ``path``; errors name the file."""
    path = Path(path)
    try:
        data = read_yaml(path)
        _check_depth(data, "")  # before anything walks it: YAML anchors can make a structure contain itself
        return resolve(apply_overrides(data, overrides), plugins, default_name=path.stem, source=path)
    except RecipeError as exc:
        message = str(exc)
        raise RecipeError(message if message.startswith(f"recipe {path}") else f"recipe {path}: {message}") from None
