"""What is registered, as plain rows: the data behind ``tlkit backbones|datasets|heads|plugins``.

Options and their defaults are read from each plugin's own options dataclass, so listings never
drift from what the recipe validator accepts. ``tlkit backbones|datasets|heads`` read their rows from
the listing index (:mod:`tlkit.cli.listing_index`) when it is current, so they answer without importing
torch; this module therefore imports the plugin machinery only where it builds rows.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlkit.cli import listing_index
from tlkit.contract.registry import Registry
from tlkit.errors import RegistryError, did_you_mean
from tlkit.util.units import tracing_plugins

if TYPE_CHECKING:
    from tlkit.contract.plugin_manager import Plugins


def _type_name(annotation: Any) -> str:
    """A readable type: ``str | None``, ``int``, ``'fp32' | 'bf16'``."""
    if isinstance(annotation, str):
        return annotation.replace("typing.", "")
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " | ".join(_yaml_scalar(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def _yaml_scalar(value: Any) -> str:
    """A Literal choice as a recipe spells it: ``fp32``, ``null``, ``true``."""
    import yaml

    text: str = yaml.safe_dump(value, default_flow_style=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def matching(registry: Any, pattern: str | None) -> list[str]:
    """Names matching ``pattern``; none is an error naming the closest names (exit 2, not an empty table)."""
    names: list[str] = registry.names(pattern)
    if names or pattern is None:
        return names
    every = registry.names("*")
    if any(c in pattern for c in "*?["):
        hint = did_you_mean(pattern.rstrip("*?"), every, n=3)
        raise RegistryError(f"no {registry.kind} matches '{pattern}'{hint or f'; run `tlkit {registry.kind}s` to list them'}")
    registry.get(pattern)  # raises "unknown <kind> 'x'; did you mean ...?"
    return names


def offline_hint(exc: BaseException, plugins: Plugins, backbone: str | None = None) -> str:
    """For an error caused by a failed download: how to run offline, naming a backbone whose weights are here.

    ``""`` when ``exc`` was not caused by a network failure (an ``OSError`` as its cause).
    ``backbone`` is the one the run asked for; it is not suggested again when its weights are here.
    """
    if not isinstance(exc.__cause__, OSError) or "--set dataset.root=" in str(exc):
        return ""
    ready = []
    for name in plugins.backbones.names():
        spec = plugins.backbones.get(name)
        try:
            if spec.weights_available is not None and spec.weights_available():
                ready.append(name)
        except Exception:  # noqa: BLE001 - a listing helper; an odd plugin must not hide the real error
            continue
    switch = f" --set backbone.name={ready[0]}" if ready and backbone not in ready else ""
    return f"; to run offline, use installed weights and local data:{switch} --set dataset.root=DIR"


def describe(spec: Any) -> str:
    """The entry's one-line description: its own, else the first line of its builder's docstring."""
    text = spec.description
    if not text:
        for attr in ("build", "fit", "load"):  # the function that does the entry's main work
            doc = getattr(getattr(spec, attr, None), "__doc__", None)
            if doc and doc.strip():
                text = doc
                break
    return text.strip().splitlines()[0] if text and text.strip() else ""


def describe_options(options_type: type) -> list[dict[str, Any]]:
    """One row per option: name, type, default (``"required"`` when none) and help."""
    from tlkit.contract.options import option_fields

    hints = typing.get_type_hints(options_type, include_extras=True)
    rows = []
    for f in option_fields(options_type):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "required"
        rows.append({"name": f.name, "type": _type_name(hints.get(f.name, f.type)), "default": default, "help": f.metadata.get("help", "")})
    return rows


@dataclass(frozen=True)
class Listed:
    """An entry as the listing index keeps it: its printed row, nothing to build it with."""

    name: str
    plugin: str
    hidden: bool
    row: dict[str, Any]


def listing(kind: str, pattern: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``tlkit <kind> [PATTERN]`` (``backbones``, ``datasets``, ``heads``) and how many a plain listing leaves out.

    From the listing index when it matches this environment (no torch import); otherwise from the
    plugins, saving the index for next time when every plugin loaded.
    """
    listed = _indexed(kind)
    if listed is None:
        from tlkit.contract.plugin_manager import get_plugins

        plugins = get_plugins()
        return _ROWS[kind](plugins, pattern), getattr(plugins, kind).hidden_count() if pattern is None else 0
    return [listed.get(name).row for name in matching(listed, pattern)], listed.hidden_count() if pattern is None else 0


def _indexed(kind: str) -> Registry[Listed] | None:
    """Every entry of ``kind`` from the index (built and saved first when stale); ``None`` to ask the plugins directly.

    The plugins are asked directly when this process already loaded them (they may be a test's own
    set, and asking is then cheap) or when plugin tracing is on (its point is to watch them load).
    """
    loading = sys.modules.get("tlkit.contract.plugin_manager")
    if (loading is not None and loading.loaded() is not None) or tracing_plugins():
        return None
    key = listing_index.fingerprint()
    kinds = listing_index.load(key)
    if kinds is None:
        from tlkit.cli.console import json_ready
        from tlkit.contract.plugin_manager import get_plugins

        plugins = get_plugins()
        kinds = {
            name: [{"hidden": bool(getattr(getattr(plugins, name).get(row["name"]), "hidden", False)), "row": json_ready(row)} for row in rows(plugins, "*")]
            for name, rows in _ROWS.items()
        }
        if not any(status.failed for status in plugins.status.values()):
            listing_index.save(key, kinds)
    listed: Registry[Listed] = Registry(kind.removesuffix("s"))
    for entry in kinds[kind]:
        listed.add(Listed(entry["row"]["name"], entry["row"]["plugin"], entry["hidden"], entry["row"]))
    return listed


def backbones(plugins: Plugins, pattern: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in matching(plugins.backbones, pattern):
        spec = plugins.backbones.get(name)
        try:
            available = spec.weights_available() if spec.weights_available else None
        except Exception:
            available = None
        card = _card(spec)
        rows.append(
            {
                "name": name,
                "feature_dim": spec.feature_dim,
                **card,
                "input": _input(spec, card.get("input_size")),
                "plugin": spec.plugin,
                "weights_offline": available,
                "description": describe(spec),
                "options": describe_options(spec.options),
            }
        )
    return rows


_CARD_FIELDS = ("input_size", "num_params", "pretrained_tag", "license")


def _card(spec: Any) -> dict[str, Any]:
    """The spec's card fields (``None`` where the plugin does not know them or its card fails)."""
    card: Any = {}
    maker = getattr(spec, "card", None)
    if callable(maker):
        try:
            card = maker() or {}
        except Exception:  # noqa: BLE001 - a listing must not fail on one plugin's metadata
            card = {}
    return {key: card.get(key) if isinstance(card, dict) else None for key in _CARD_FIELDS}


def _input(spec: Any, card_size: Any) -> str | None:
    """What the backbone is fed, e.g. ``224 bicubic``: from its preprocessing (a record, or the function
    it registered, called here), else the card's ``input_size``; ``None`` when neither says."""
    try:
        pre = spec.resolve_preprocessing()
        return f"{int(pre.crop_size)} {pre.interpolation}"
    except Exception:  # noqa: BLE001 - a listing must not fail on one plugin's preprocessing
        return None if card_size is None else str(card_size)


def datasets(plugins: Plugins, pattern: str | None = None) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "plugin": s.plugin, "description": describe(s), "options": describe_options(s.options)}
        for s in (plugins.datasets.get(n) for n in matching(plugins.datasets, pattern))
    ]


def heads(plugins: Plugins, pattern: str | None = None) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "plugin": s.plugin, "description": describe(s), "options": describe_options(s.options)}
        for s in (plugins.heads.get(n) for n in matching(plugins.heads, pattern))
    ]


_ROWS: dict[str, Callable[[Plugins, str | None], list[dict[str, Any]]]] = {"backbones": backbones, "datasets": datasets, "heads": heads}


def plugin_rows(plugins: Plugins, *, include_builtin: bool = False) -> list[dict[str, Any]]:
    """One row per plugin, third-party first; a skipped plugin has status ``failed`` (or ``incompatible``: it does not fit this plugin API) and its ``error``."""
    return [
        {
            "name": s.name,
            "version": s.version,
            "builtin": s.builtin,
            "hooks": s.hooks,
            "registered": {kind: len(names) if len(names) > 20 else names for kind, names in s.registered.items()},
            "status": s.state,
            "error": s.error,
        }
        for s in sorted(plugins.status.values(), key=lambda s: (s.builtin, s.name))
        if include_builtin or not s.builtin
    ]
