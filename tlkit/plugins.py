"""The plugin manager: load third-party entry points, then the built-ins, once, and fill the registries.

Third-party packages declare ``[project.entry-points.tlkit]``; built-in plugins are the modules in
``DEFAULT_PLUGINS`` and go through the very same ``pm.register`` path. A plugin that fails to
import, raises in a hook or registers a malformed entry is reported once as a warning naming it
and skipped; everything else keeps working. A name registered twice is an error.

``TLKIT_LOAD_PLUGINS`` (comma-separated distribution names; empty = none) limits which
third-party plugins load. ``TLKIT_TRACE_PLUGINS=1`` logs each hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from tlkit import hookspecs
from tlkit.registry import Registry
from tlkit.specs import BackboneSpec, DatasetSpec, HeadSpec

ENTRY_POINT_GROUP = "tlkit"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "tlkit_plugins.backbones.torchvision_models",
    "tlkit_plugins.backbones.timm_models",
    "tlkit_plugins.backbones.efficientnet_lite",
    "tlkit_plugins.datasets.imagefolder",
    "tlkit_plugins.heads.linear",
    "tlkit_plugins.heads.logreg",
    "tlkit_plugins.heads.mlp",
    "tlkit_plugins.heads.knn",
    "tlkit_plugins.heads.centroid",
)

# hook name -> (registry attribute, spec type)
_HOOKS: dict[str, tuple[str, type]] = {
    "register_backbones": ("backbones", BackboneSpec),
    "register_datasets": ("datasets", DatasetSpec),
    "register_heads": ("heads", HeadSpec),
}


class PluginWarning(UserWarning):
    """A plugin was skipped (or one of its entries was); tlkit goes on without it."""


@dataclass
class PluginStatus:
    """What one plugin is and did: shown by ``tlkit plugins``."""

    name: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Plugins:
    """The loaded plugin manager and the registries it filled."""

    pm: pluggy.PluginManager
    backbones: Registry[BackboneSpec]
    datasets: Registry[DatasetSpec]
    heads: Registry[HeadSpec]
    status: dict[str, PluginStatus]


def _builtin_name(module_name: str) -> str:
    """``tlkit_plugins.backbones.timm_models`` -> ``tlkit:timm_models``."""
    return "tlkit:" + module_name.rsplit(".", 1)[-1]


def _normalise(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _allowed_distributions() -> set[str] | None:
    raw = os.environ.get("TLKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {_normalise(n) for n in raw.split(",") if n.strip()}


def _trace(message: str) -> None:
    if os.environ.get("TLKIT_TRACE_PLUGINS", "") not in ("", "0"):
        print(f"[tlkit trace] {message}", file=sys.stderr)


def _warn(status: PluginStatus, message: str) -> None:
    status.error = message if status.error is None else f"{status.error}; {message}"
    warnings.warn(f"plugin '{status.name}' {message}", PluginWarning, stacklevel=3)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]


def _version_of(module: Any) -> str:
    from tlkit import __version__

    return getattr(module, "__version__", None) or __version__


def _register_one(pm: pluggy.PluginManager, plugin: object, status: PluginStatus, statuses: dict[str, PluginStatus]) -> None:
    statuses[status.name] = status
    try:
        pm.register(plugin, name=status.name)
    except Exception as exc:  # pluggy rejects malformed hookimpls here
        _warn(status, f"could not be registered ({_describe(exc)})")
        return
    unknown = [
        caller.name for caller in pm.get_hookcallers(plugin) or [] if caller.name not in _HOOKS
    ]
    known = [caller.name for caller in pm.get_hookcallers(plugin) or [] if caller.name in _HOOKS]
    for name in unknown:
        _warn(status, f"implements unknown hook '{name}' (tlkit has {', '.join(sorted(_HOOKS))})")
    status.hooks = sorted(known)


def _load_entry_points(pm: pluggy.PluginManager, statuses: dict[str, PluginStatus]) -> None:
    allowed = _allowed_distributions()
    seen: set[tuple[str, str]] = set()
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        dist_name = ep.dist.name if ep.dist is not None else ep.name
        if (dist_name, ep.name) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((dist_name, ep.name))
        if allowed is not None and _normalise(dist_name) not in allowed:
            _trace(f"skipping {dist_name} (not in TLKIT_LOAD_PLUGINS)")
            continue
        name = dist_name if ep.name in (dist_name, _normalise(dist_name), dist_name.replace("-", "_")) else f"{dist_name}:{ep.name}"
        version = ep.dist.version if ep.dist is not None else "?"
        status = PluginStatus(name=name, version=version, builtin=False)
        try:
            plugin = ep.load()
        except Exception as exc:
            statuses[name] = status
            _warn(status, f"failed to import ({_describe(exc)}); it is skipped")
            continue
        _register_one(pm, plugin, status, statuses)


def _collect(pm: pluggy.PluginManager, statuses: dict[str, PluginStatus], registries: dict[str, Registry[Any]]) -> None:
    """Call each plugin's hooks one by one, so a failing plugin is skipped alone and named."""
    for hook_name, (attr, spec_type) in _HOOKS.items():
        caller = getattr(pm.hook, hook_name)
        registry = registries[attr]
        for impl in reversed(caller.get_hookimpls()):  # registration order: third-party, then built-ins
            status = statuses[impl.plugin_name]
            added: list[str] = []
            pending: list[Any] = []

            def register(spec: Any, _pending: list[Any] = pending) -> None:
                _pending.append(spec)

            _trace(f"{impl.plugin_name}.{hook_name}()")
            try:
                impl.function(register=register)
            except Exception as exc:
                _warn(status, f"raised in {hook_name} ({_describe(exc)}); its {attr} are skipped")
                continue
            for spec in pending:
                if not isinstance(spec, spec_type):
                    _warn(status, f"registered a {type(spec).__name__} in {hook_name}, expected {spec_type.__name__}; skipped")
                    continue
                problem = _malformed(spec)
                if problem:
                    _warn(status, f"registered a malformed {attr[:-1]} '{getattr(spec, 'name', '?')}' ({problem}); skipped")
                    continue
                spec = _with_plugin(spec, impl.plugin_name)
                registry.add(spec)
                added.append(spec.name)
            _trace(f"{impl.plugin_name}.{hook_name}() registered {len(added)}")
            if added:
                status.registered[attr] = added


def _malformed(spec: Any) -> str | None:
    import dataclasses

    if not isinstance(spec.name, str) or not spec.name or spec.name != spec.name.strip():
        return "name must be a non-empty string"
    for attr in ("build", "load", "fit"):
        if hasattr(spec, attr) and not callable(getattr(spec, attr)):
            return f"'{attr}' is not callable"
    if not dataclasses.is_dataclass(spec.options):
        return "'options' must be a dataclass type"
    dim = getattr(spec, "feature_dim", None)
    if dim is not None and (not isinstance(dim, int) or dim <= 0):
        return "'feature_dim' must be a positive int or None"
    return None


def _with_plugin(spec: Any, plugin_name: str) -> Any:
    import dataclasses

    return dataclasses.replace(spec, plugin=plugin_name)


def load_plugins(*, entry_points: bool = True, builtins: bool = True, extra: Iterable[object] = ()) -> Plugins:
    """Build a fresh plugin manager and registries.

    ``extra`` are plugin objects (modules, classes or instances) registered after entry points
    and before the built-ins; tests use it to add throwaway plugins in-process.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    statuses: dict[str, PluginStatus] = {}
    if entry_points:
        _load_entry_points(pm, statuses)
    for index, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
        _register_one(pm, plugin, PluginStatus(name=name, version=_version_of(plugin), builtin=False), statuses)
    if builtins:
        for module_name in DEFAULT_PLUGINS:
            module: ModuleType = importlib.import_module(module_name)
            _register_one(pm, module, PluginStatus(name=_builtin_name(module_name), version=_version_of(module), builtin=True), statuses)
    registries: dict[str, Registry[Any]] = {
        "backbones": Registry("backbone"),
        "datasets": Registry("dataset"),
        "heads": Registry("head"),
    }
    _collect(pm, statuses, registries)
    return Plugins(pm=pm, status=statuses, **registries)


_loaded: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use and only once."""
    global _loaded
    if _loaded is None:
        _loaded = load_plugins()
    return _loaded


def set_plugins(plugins: Plugins | None) -> None:
    """Replace the process-wide plugins (tests), or forget them so the next use reloads."""
    global _loaded
    _loaded = plugins


RegisterCallback = Callable[[Any], None]
