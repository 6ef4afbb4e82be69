"""The plugin manager: load third-party entry points, then the built-ins, once, and fill the registries.

Third-party packages declare ``[project.entry-points.tlkit]``; built-in plugins are the modules in
``DEFAULT_PLUGINS`` and go through the very same ``pm.register`` path. A plugin that fails to
import, raises in a hook or registers a malformed entry is skipped as a whole (none of its entries
is used) and reported once, as one warning naming it; everything else keeps working. A name two
plugins both register is an error naming both.

A plugin that does not fit the plugin API (:mod:`tlkit.contract.plugin_api`: a declared
``tlkit_plugin_api`` this tlkit does not speak, a hook taking arguments the hook does not hand, a
``build``/``fit``/``load`` that cannot take what tlkit passes) is *incompatible*: skipped the same way,
reported in one line saying what changed, and its entries stay known by name, so a recipe naming one
gets that line instead of "unknown backbone".

``TLKIT_LOAD_PLUGINS`` (comma-separated distribution names; empty = none) limits which
third-party plugins load. ``TLKIT_TRACE_PLUGINS=1`` logs each hook call to stderr.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from tlkit.contract import hookspecs, plugin_api
from tlkit.contract.observer import ObserverSpec
from tlkit.contract.preprocessing import Preprocessing
from tlkit.contract.registry import Registry
from tlkit.contract.specs import BackboneSpec, DatasetSpec, HeadSpec, PluginOptions
from tlkit.errors import RegistryError, did_you_mean
from tlkit.util.units import tracing_plugins

ENTRY_POINT_GROUP = "tlkit"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "tlkit_plugins.backbones.torchvision_models",
    "tlkit_plugins.backbones.timm_models",
    "tlkit_plugins.backbones.efficientnet_lite",
    "tlkit_plugins.datasets.imagefolder",
    "tlkit_plugins.datasets.webdataset",
    "tlkit_plugins.datasets.csv_manifest",
    "tlkit_plugins.datasets.hf_datasets",
    "tlkit_plugins.heads.linear",
    "tlkit_plugins.heads.logreg",
    "tlkit_plugins.heads.mlp",
    "tlkit_plugins.heads.knn",
    "tlkit_plugins.heads.centroid",
    "tlkit_plugins.observers.mlflow_tracking",
)

# Built-ins whose import is expensive (torchvision, timm: seconds) and the names they register, as
# shell-style patterns: they are imported only when a name matching them is asked for, or when a
# listing needs every entry (Registry.defer). A test checks every name they register matches.
DEFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    "tlkit_plugins.backbones.torchvision_models": ("torchvision:*", "resnet18"),
    "tlkit_plugins.backbones.timm_models": ("timm:*",),
}

# hook name -> (registry attribute, spec type)
_HOOKS: dict[str, tuple[str, type]] = {
    "register_backbones": ("backbones", BackboneSpec),
    "register_datasets": ("datasets", DatasetSpec),
    "register_heads": ("heads", HeadSpec),
    "register_observers": ("observers", ObserverSpec),
}


class PluginWarning(UserWarning):
    """A plugin was skipped; tlkit goes on without it."""


@dataclass
class PluginStatus:
    """What one plugin is and did: shown by ``tlkit plugins``.

    ``name`` is the distribution name for a third-party package (``dist:entry`` when the
    distribution declares several entry points), ``tlkit:<module>`` for a built-in. ``error`` is
    set when the plugin was skipped, and says why; a skipped plugin registered nothing.
    ``incompatible`` says it was skipped because it does not fit this tlkit's plugin API (``error``
    then says what changed); its entries are then known by name only (``Registry.refuse``).
    """

    name: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    problems: list[str] = field(default_factory=list, repr=False)
    incompatibilities: list[str] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> bool:
        """Skipped, for whatever reason (an incompatible plugin is skipped too)."""
        return self.error is not None

    @property
    def incompatible(self) -> bool:
        return bool(self.incompatibilities)

    @property
    def state(self) -> str:
        """``ok``, ``incompatible`` or ``failed``: the status column of ``tlkit plugins``."""
        return "incompatible" if self.incompatible else "failed" if self.failed else "ok"


class Plugins:
    """The loaded plugin manager and the registries it filled (deferred built-ins load on first need)."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        backbones: Registry[BackboneSpec[PluginOptions]],  # each plugin's own options type, known here as PluginOptions
        datasets: Registry[DatasetSpec[PluginOptions]],
        heads: Registry[HeadSpec[PluginOptions]],
        status: dict[str, PluginStatus],
        observers: Registry[ObserverSpec[PluginOptions]] | None = None,  # run observers (tracking tools)
    ) -> None:
        self.pm, self.backbones, self.datasets, self.heads = pm, backbones, datasets, heads
        self.observers: Registry[ObserverSpec[PluginOptions]] = observers if observers is not None else Registry("observer")
        self._status = status

    @property
    def status(self) -> dict[str, PluginStatus]:
        """Every plugin's status: the deferred built-ins are loaded first, so the table is complete."""
        for registry in (self.backbones, self.datasets, self.heads, self.observers):
            len(registry)  # loads what is pending
        return self._status


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
    if tracing_plugins():
        print(f"[tlkit trace] {message}", file=sys.stderr)


def _problem(status: PluginStatus, message: str) -> None:
    """Note why ``status``'s plugin is skipped; all of it is reported in one warning at the end."""
    status.problems.append(message)
    _trace(f"{status.name}: {message}")


def _incompatible(status: PluginStatus, message: str) -> None:
    """Note how ``status``'s plugin does not fit the plugin API; reported with its problems, in one warning."""
    status.incompatibilities.append(message)
    _trace(f"{status.name}: incompatible: {message}")


def _report(statuses: dict[str, PluginStatus]) -> None:
    """One warning per skipped plugin, naming it and every reason, so a broken plugin is reported once."""
    from tlkit import __version__

    for status in statuses.values():
        if status.incompatibilities:
            status.error = "; ".join([*status.incompatibilities, *status.problems])
            warnings.warn(f"plugin '{status.name}' is incompatible with tlkit {__version__}: {status.error}", PluginWarning, stacklevel=3)
        elif status.problems:
            status.error = "; ".join(status.problems)
            warnings.warn(f"plugin '{status.name}' is skipped: {status.error}", PluginWarning, stacklevel=3)


def _describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (a multi-line message joined with "; "), cut at ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {'; '.join(lines)}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _distribution_of(plugin: object) -> tuple[str, str] | None:
    """The installed distribution (name, version) that provides ``plugin``'s top-level package."""
    module = getattr(plugin, "__module__", None) if not isinstance(plugin, ModuleType) else plugin.__name__
    top = (module or "").split(".", 1)[0]
    if not top or not getattr(sys.modules.get(top), "__file__", None):  # made in memory: no distribution
        return None
    names = importlib.metadata.packages_distributions().get(top) or []
    for dist_name in names:
        try:
            return dist_name, importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _version_of(module: Any) -> str:
    from tlkit import __version__

    return getattr(module, "__version__", None) or __version__


def _register_one(pm: pluggy.PluginManager, plugin: object, status: PluginStatus, statuses: dict[str, PluginStatus]) -> None:
    statuses[status.name] = status
    declaration = plugin_api.declaration_problem(plugin)
    if declaration:
        _incompatible(status, declaration)
    try:
        pm.register(plugin, name=status.name)
    except Exception as exc:  # pluggy rejects malformed hookimpls (wrong argument names) here, in three lines
        mismatched = plugin_api.hookimpl_problems(pm, plugin, _HOOKS)
        for message in mismatched:
            _incompatible(status, message)
        if not mismatched:
            _problem(status, f"could not be registered ({_describe(exc)})")
        return
    callers = pm.get_hookcallers(plugin) or []
    status.hooks = sorted(caller.name for caller in callers if caller.name in _HOOKS)
    for caller in callers:
        if caller.name not in _HOOKS:
            hint = did_you_mean(caller.name, _HOOKS, n=1) or f" (tlkit has {', '.join(_HOOKS)})"
            _problem(status, f"implements unknown hook '{caller.name}'{hint}")


def _load_entry_points(pm: pluggy.PluginManager, statuses: dict[str, PluginStatus]) -> None:
    allowed = _allowed_distributions()
    seen: set[tuple[str, str]] = set()
    found: set[str] = set()
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name))
    per_dist = Counter((e.dist.name if e.dist is not None else e.name, e.name) for e in eps)
    for ep in eps:
        dist_name = ep.dist.name if ep.dist is not None else ep.name
        if (dist_name, ep.name) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((dist_name, ep.name))
        found.add(_normalise(dist_name))
        if allowed is not None and _normalise(dist_name) not in allowed:
            _trace(f"skipping {dist_name} (not in TLKIT_LOAD_PLUGINS)")
            continue
        several = sum(1 for d, _ in per_dist if d == dist_name) > 1
        name = f"{dist_name}:{ep.name}" if several else dist_name
        version = ep.dist.version if ep.dist is not None else "?"
        status = PluginStatus(name=name, version=version, builtin=False)
        _trace(f"importing {ep.value} ({name} {version})")
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a plugin must never take tlkit down with it
            statuses[name] = status
            _problem(status, f"importing {ep.value} raised {_describe(exc)}")
            continue
        _register_one(pm, plugin, status, statuses)
    for missing in sorted((allowed or set()) - found):
        warnings.warn(
            f"TLKIT_LOAD_PLUGINS names '{missing}', which is not an installed tlkit plugin"
            f"{did_you_mean(missing, found, n=1)}",
            PluginWarning,
            stacklevel=3,
        )


def _call_hooks(pm: pluggy.PluginManager, status: PluginStatus) -> dict[str, list[Any]]:
    """Call every hook ``status``'s plugin implements; return its valid entries per registry.

    Each hook is called through pluggy, on a subset caller that holds this plugin alone
    (``subset_hook_caller``), so a failing plugin is caught and named alone while pluggy still does
    the calling (argument checks, hook-call monitoring for ``TLKIT_TRACE_PLUGINS``). Any problem is
    noted on ``status`` and the caller then adds none of its entries.
    """
    plugin = pm.get_plugin(status.name)
    entries: dict[str, list[Any]] = {}
    if plugin is None:
        return entries
    others = [p for name, p in pm.list_name_plugin() if name != status.name]
    for hook_name, (attr, spec_type) in _HOOKS.items():
        if not any(i.plugin_name == status.name for i in getattr(pm.hook, hook_name).get_hookimpls()):
            continue
        pending: list[Any] = []
        try:
            pm.subset_hook_caller(hook_name, remove_plugins=others)(register=pending.append)
        except (Exception, SystemExit) as exc:
            _problem(status, f"{hook_name} raised {_describe(exc)}")
            continue
        entries.setdefault(attr, []).extend(_valid_entries(status, hook_name, attr, spec_type, pending))
    return entries


def _valid_entries(status: PluginStatus, hook_name: str, attr: str, spec_type: type, pending: list[Any]) -> list[Any]:
    """The well-formed specs one hook call registered, stamped with the plugin's name; problems noted on ``status``."""
    valid: list[Any] = []
    names: set[str] = set()
    for item in pending:
        if not isinstance(item, spec_type):
            _problem(status, f"passed a {type(item).__name__} to register in {hook_name}; expected tlkit.{spec_type.__name__}")
            continue
        spec: Any = item
        problem = _malformed(spec) or (f"registered twice by {hook_name}" if spec.name in names else None)
        if problem:
            _problem(status, f"registered a malformed {attr[:-1]} {getattr(spec, 'name', '?')!r} ({problem})")
            continue
        for mismatch in plugin_api.spec_problems(spec):  # kept: an incompatible plugin's entries are known by name
            _incompatible(status, f"{spec_type.__name__} {spec.name!r}.{mismatch}")
        names.add(spec.name)
        valid.append(dataclasses.replace(spec, plugin=status.name))
    _trace(f"{status.name}.{hook_name}() registered {len(pending)}")
    return valid


def _monitor_hook_calls(pm: pluggy.PluginManager) -> None:
    """With ``TLKIT_TRACE_PLUGINS``, log every hook call pluggy makes (which plugin, which hook)."""
    if not tracing_plugins():
        return

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        for impl in impls:
            _trace(f"{impl.plugin_name}.{hook_name}()")

    def after(outcome: Any, hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        if outcome.exception is not None:
            _trace(f"{hook_name}() raised {_describe(outcome.exception)}")

    pm.add_hookcall_monitoring(before, after)


def _collect(pm: pluggy.PluginManager, statuses: dict[str, PluginStatus], registries: dict[str, Registry[Any]]) -> None:
    """Fill the registries plugin by plugin: all of a plugin or none.

    Hooks are called built-ins first, so a third-party hook that looks up a built-in backbone with
    ``tlkit.backbones.registered`` (a derived backbone's base) finds it in :class:`Loading`'s preview;
    entries are then added third-party first (a name two plugins register is an error naming both).
    An incompatible plugin's entries are not added but refused by name, with the line saying why.
    """
    loading = Loading(backbones=registries["backbones"])
    called: dict[str, dict[str, list[Any]]] = {}
    with loading.active():
        for status in sorted(statuses.values(), key=lambda s: not s.builtin):
            if status.problems and not status.incompatible:
                continue
            called[status.name] = _call_hooks(pm, status)
            if not status.problems and not status.incompatible:
                for spec in called[status.name].get("backbones", []):
                    loading.preview.setdefault(spec.name, spec)
    for status in statuses.values():
        entries = called.get(status.name)
        if entries is None:
            continue
        if status.incompatible:
            for attr, specs in entries.items():
                for spec in specs:
                    registries[attr].refuse(spec.name, _refusal(registries[attr].kind, spec, status))
            continue
        if status.problems:
            continue
        for attr, specs in entries.items():
            for spec in specs:
                registries[attr].add(spec)  # a name another plugin took is an error naming both
            status.registered[attr] = [spec.name for spec in specs]


@dataclass
class Loading:
    """Plugins being loaded: what ``register_backbones`` hooks registered so far, and the registry they will fill.

    ``tlkit.backbones.registered(name)`` inside a hook reads :attr:`preview` (never the process-wide
    plugins, which are what is being loaded: asking for them there recursed through loading); a spec
    made there (``derived_spec``) keeps :attr:`backbones` and resolves its base in it when used.
    """

    backbones: Registry[Any]
    preview: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def active(self) -> Iterator[Loading]:
        _active.append(self)
        try:
            yield self
        finally:
            _active.remove(self)

    def get(self, name: str) -> Any:
        """The backbone registered so far as ``name`` (built-ins, and plugins whose hooks ran before this one)."""
        if name in self.preview:
            return self.preview[name]
        hint = did_you_mean(name, self.preview, n=1)
        raise RegistryError(f"unknown backbone '{name}'{hint} (in a hook, registered() sees the built-ins and plugins loaded earlier)")


_active: list[Loading] = []


def loading() -> Loading | None:
    """The plugins being loaded right now (a hook is running), or None."""
    return _active[-1] if _active else None


def _refusal(kind: str, spec: Any, status: PluginStatus) -> str:
    """The one line a recipe naming ``spec`` of an incompatible plugin gets: which plugin, and what changed."""
    from tlkit import __version__

    own = plugin_api.spec_problems(spec)
    reasons = "; ".join(own or [*status.incompatibilities, *status.problems])
    return f"{kind} '{spec.name}' (plugin {status.name} {status.version}) is incompatible with tlkit {__version__}: {reasons}"


def _malformed(spec: Any) -> str | None:
    """What is wrong with a registered spec's fields, or None; checked before it enters a registry."""
    if not isinstance(spec.name, str) or not spec.name or spec.name != spec.name.strip():
        return "'name' must be a non-empty string without surrounding spaces"
    optional = ("build", "load") if isinstance(spec, HeadSpec) else ()  # a head gives one of them (or both)
    for attr in ("build", "load", "fit"):
        value = getattr(spec, attr, None)
        if hasattr(spec, attr) and not callable(value) and not (attr in optional and value is None):
            return f"'{attr}' is not callable"
    if isinstance(spec, HeadSpec) and spec.build is None and spec.load is None:
        return "a head needs 'build' (rebuilds it from its saved config) or 'load' (from its saved tensors)"
    if isinstance(spec, HeadSpec) and spec.from_classifier is not None and not callable(spec.from_classifier):
        return "'from_classifier' must be a function taking a trained nn.Linear (or None)"
    if not isinstance(spec.description, str):
        return "'description' must be a string"
    if not (isinstance(spec.options, type) and dataclasses.is_dataclass(spec.options)):
        return "'options' must be a dataclass type (the class, not an instance)"
    params: Any = getattr(spec.options, "__dataclass_params__", None)
    if params is None or not params.frozen:  # options are shared and hashed: never changed in place
        return f"'options' {spec.options.__name__} must be a frozen dataclass: @dataclass(frozen=True)"
    if isinstance(spec, BackboneSpec):
        dim = spec.feature_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            return f"'feature_dim' must be a positive int or None, not {dim!r}"
        if not isinstance(spec.preprocessing, Preprocessing) and not callable(spec.preprocessing):
            return "'preprocessing' must be a tlkit.Preprocessing or a function returning one"
        if spec.weights_available is not None and not callable(spec.weights_available):
            return "'weights_available' must be a function returning a bool"
    return None


def load_plugins(*, entry_points: bool = True, builtins: bool = True, extra: Iterable[object] = (), defer: bool = True) -> Plugins:
    """Build a fresh plugin manager and registries.

    With ``defer``, the built-ins of :data:`DEFERRED_PLUGINS` are imported only when a name they
    register is asked for (or a listing needs everything).

    ``extra`` are plugin objects (modules, classes or instances) registered after entry points
    and before the built-ins; tests use it to add throwaway plugins in-process. Each is named
    after the installed distribution that provides it, if any, else after its module.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    _monitor_hook_calls(pm)
    statuses: dict[str, PluginStatus] = {}
    if entry_points:
        _load_entry_points(pm, statuses)
    for index, plugin in enumerate(extra):
        dist = _distribution_of(plugin)
        name = dist[0] if dist else getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
        if name in statuses:
            name = f"{name}-{index}"
        version = dist[1] if dist else _version_of(plugin)
        _register_one(pm, plugin, PluginStatus(name=name, version=version, builtin=False), statuses)
    deferred = [name for name in DEFAULT_PLUGINS if name in DEFERRED_PLUGINS] if builtins and defer else []
    if builtins:
        for module_name in DEFAULT_PLUGINS:
            if module_name in deferred:
                continue
            module: ModuleType = importlib.import_module(module_name)
            _register_one(pm, module, PluginStatus(name=_builtin_name(module_name), version=_version_of(module), builtin=True), statuses)
    registries: dict[str, Registry[Any]] = {
        "backbones": Registry("backbone"),
        "datasets": Registry("dataset"),
        "heads": Registry("head"),
        "observers": Registry("observer"),
    }
    _collect(pm, statuses, registries)
    _report(statuses)
    for module_name in deferred:
        registries["backbones"].defer(DEFERRED_PLUGINS[module_name], _deferred_loader(pm, module_name, statuses, registries))
    for registry in registries.values():
        registry.settle()  # a plugin's name inside a deferred catalogue loads it now: a duplicate is an error at once
    return Plugins(pm=pm, status=statuses, **registries)


def _deferred_loader(pm: pluggy.PluginManager, module_name: str, statuses: dict[str, PluginStatus], registries: dict[str, Registry[Any]]) -> Any:
    """Import and register one deferred built-in the way :func:`load_plugins` does the others (once)."""

    def load() -> None:
        module: ModuleType = importlib.import_module(module_name)
        status = PluginStatus(name=_builtin_name(module_name), version=_version_of(module), builtin=True)
        _register_one(pm, module, status, statuses)
        _collect(pm, {status.name: status}, registries)
        _report({status.name: status})

    return load


_loaded: Plugins | None = None
_loading_process_wide = False


def get_plugins() -> Plugins:
    """The process-wide plugins, loaded on first use and only once.

    Asked for while they load (from a plugin's hook), it is an error saying so, never a second load.
    """
    global _loaded, _loading_process_wide
    if _loaded is None:
        if _loading_process_wide:
            raise RegistryError(
                "the plugins are still loading: a register_* hook cannot use them; look backbones up with "
                "tlkit.backbones.registered(name), or build later (in build, not in the hook)"
            )
        _loading_process_wide = True
        try:
            _loaded = load_plugins()
        finally:
            _loading_process_wide = False
    return _loaded


def loaded() -> Plugins | None:
    """The process-wide plugins if something already loaded them (``None``: loading them is still to pay)."""
    return _loaded


def set_plugins(plugins: Plugins | None) -> None:
    """Replace the process-wide plugins (tests), or forget them so the next use reloads."""
    global _loaded
    _loaded = plugins

