"""The plugin API's version, and whether a plugin fits it: checked when plugins load, said in one line.

The plugin API is what a plugin relies on: the hooks (:mod:`tlkit.contract.hookspecs`), the records
it registers, the calls tlkit makes on their callables (``BackboneSpec.build(request, options)``...)
and the public names (``tlkit.__all__``, ``tlkit.backbones``, ``tlkit.errors``, ``tlkit.fitting``,
``tlkit.testing``). :data:`PLUGIN_API_VERSION` counts its breaking changes: it goes up by one whenever
a plugin written for the previous version could stop working, and ``CHANGELOG.md`` says how to update.

A plugin that does not fit is *incompatible*: skipped as a whole, shown so by ``tlkit plugins`` with one
line saying what changed, and each of its entries stays known by name so that a recipe naming one is
told why it cannot be used (never "unknown backbone", never a traceback). Everything here is read from
signatures and annotations, without calling anything the plugin gave:

- the plugin declares ``tlkit_plugin_api = N`` (optional, at module level) for a version this tlkit
  does not speak;
- a hook implementation takes an argument the hook does not hand (pluggy refuses to register it);
- a registered callable cannot take the arguments tlkit passes, or ``BackboneSpec.build`` still takes
  the weights as a ``str`` (plugin API 1).

Only the standard library is imported: ``import tlkit`` reads :data:`PLUGIN_API_VERSION` from here
without importing torch.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

PLUGIN_API_VERSION = 2
"""The version of the plugin API this tlkit speaks; a plugin may declare the one it was written for as ``tlkit_plugin_api``."""

OLDEST_SUPPORTED = 2
"""The oldest declared plugin API a plugin may still run with (every change since then was compatible)."""

DECLARATION = "tlkit_plugin_api"

# version -> (the tlkit release that brought it, what a plugin written for the version before must change)
CHANGES: Mapping[int, tuple[str, str]] = {
    2: ("0.2.0", "BackboneSpec.build receives a tlkit.WeightsRequest instead of the weights string"),
}

# spec type name -> callable field -> the arguments tlkit passes it (positionally), for the messages
CALLS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "BackboneSpec": {"build": ("request", "options"), "preprocessing": (), "weights_available": (), "card": ()},
    "DatasetSpec": {"load": ("options",)},
    "HeadSpec": {"fit": ("train", "options", "ctx"), "build": ("config",), "load": ("tensors", "options")},
}

_UPDATE = "update the plugin (see CHANGELOG.md)"
_checked: dict[tuple[types.CodeType, int], str | None] = {}  # (code, how many arguments) -> problem; catalogues share builders


def _tlkit_version() -> str:
    from tlkit import __version__  # imported here: tlkit/__init__ imports this module

    return __version__


def declared(plugin: object) -> object:
    """The plugin API version ``plugin`` declares (``tlkit_plugin_api``, on it or its module); ``None`` when it declares none."""
    value = getattr(plugin, DECLARATION, None)
    if value is None and not isinstance(plugin, types.ModuleType):
        module = sys.modules.get(getattr(plugin, "__module__", None) or "")
        value = getattr(module, DECLARATION, None)
    return value


def declaration_problem(plugin: object) -> str | None:
    """Why ``plugin``'s declared plugin API version is not one this tlkit speaks, or None (also when it declares none)."""
    value = declared(plugin)
    if value is None:
        return None
    version = _tlkit_version()
    if isinstance(value, bool) or not isinstance(value, int):
        return f"'{DECLARATION}' must be an int such as {PLUGIN_API_VERSION} (the plugin API of tlkit {version}), not {value!r}"
    if value > PLUGIN_API_VERSION:
        return f"it declares plugin API {value}, newer than tlkit {version}'s plugin API {PLUGIN_API_VERSION}; upgrade tlkit or use an older release of the plugin"
    if value < OLDEST_SUPPORTED:
        changes = "; ".join(f"plugin API {n} (tlkit {release}): {what}" for n, (release, what) in sorted(CHANGES.items()) if n > value)
        return f"it declares plugin API {value}, and since then {changes}; {_UPDATE}"
    return None


def hookimpl_problems(pm: Any, plugin: object, hooks: Mapping[str, object]) -> list[str]:
    """One line per hook implementation of ``plugin`` taking an argument its hook (one of ``hooks``) does not hand."""
    problems = []
    for attr in dir(plugin):
        try:
            opts = pm.parse_hookimpl_opts(plugin, attr)
        except Exception:  # noqa: BLE001 - an odd attribute is pluggy's business when it registers the plugin
            continue
        if opts is None:
            continue
        hook = opts.get("specname") or attr
        caller = getattr(pm.hook, hook, None) if hook in hooks else None
        spec = getattr(caller, "spec", None)
        params = _parameters(getattr(plugin, attr, None))
        if spec is None or params is None:
            continue
        names = [p.name for p in params if p.name not in ("self", "cls")]
        extra = [n for n in names if n not in spec.argnames]
        if extra:
            wanted = ", ".join(spec.argnames)
            problems.append(
                f"its hook {hook}({', '.join(names)}) could not be registered: tlkit calls {hook}({wanted}); "
                f"rename {', '.join(repr(n) for n in extra)} (plugin API {PLUGIN_API_VERSION})"
            )
    return problems


def spec_problems(spec: Any) -> list[str]:
    """One line per callable of a registered ``spec`` that cannot take what tlkit passes it, e.g. ``build takes (weights: str, options): ...``.

    Each line starts with the field's name; the caller adds which entry it is.
    """
    fields = CALLS.get(type(spec).__name__, {})
    problems = []
    for field, arguments in fields.items():
        value = getattr(spec, field, None)
        if value is None or not callable(value) or isinstance(value, type):
            continue
        code = getattr(value, "__code__", None)
        key = (code, len(arguments)) if isinstance(code, types.CodeType) and inspect.isfunction(value) else None
        if key is not None and key in _checked:
            problem = _checked[key]
        else:
            problem = _call_problem(value, field, arguments)
            if key is not None:
                _checked[key] = problem
        if problem:
            problems.append(problem)
    return problems


def _call_problem(function: Callable[..., Any], field: str, arguments: tuple[str, ...]) -> str | None:
    params = _parameters(function)
    if params is None:  # no signature to read (a builtin such as print): nothing to say
        return None
    shown = ", ".join(_show(p, _hints(function)) for p in params)
    try:
        inspect.Signature(params).bind(*arguments)
    except TypeError:
        return f"{field} takes ({shown}): tlkit calls {field}({', '.join(arguments)}) (plugin API {PLUGIN_API_VERSION}); {_UPDATE}"
    if field == "build" and arguments == ("request", "options") and params and _is_str(params[0], _hints(function)):
        release = CHANGES[2][0]
        return f"build takes ({shown}): since plugin API 2 (tlkit {release}) it receives a tlkit.WeightsRequest; {_UPDATE}"
    return None


def _parameters(function: object) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(function).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _hints(function: object) -> dict[str, Any]:
    """Resolved annotations (string ones evaluated in the function's module); the raw ones where that fails."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - a name the plugin imports only for type checking: fall back to the text
        return dict(getattr(function, "__annotations__", None) or {})


_STRING_LIKE = {"str", "None", "Optional", "Union", "typing", "Path", "pathlib", "PathLike", "os"}


def _is_str(param: inspect.Parameter, hints: Mapping[str, Any]) -> bool:
    """Whether ``param`` takes the weights as a string: ``str``, ``str | None``, ``Optional[str]``, ``str | Path`` (or such text)."""
    annotation = hints.get(param.name, param.annotation)
    if isinstance(annotation, str):  # unresolvable: read the text
        words = set(re.findall(r"[A-Za-z_]\w*", annotation))
        return "str" in words and words <= _STRING_LIKE
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return str in args and all(a in (str, type(None)) or (isinstance(a, type) and issubclass(a, (os.PathLike, PurePath))) for a in args)
    return annotation is str


def _show(param: inspect.Parameter, hints: Mapping[str, Any]) -> str:
    """``weights: str``, ``options``, ``*args``: a parameter as the plugin wrote it, short."""
    prefix = "*" if param.kind is inspect.Parameter.VAR_POSITIONAL else "**" if param.kind is inspect.Parameter.VAR_KEYWORD else ""
    annotation = param.annotation if isinstance(param.annotation, str) else hints.get(param.name, param.annotation)  # as written, if text
    if annotation is inspect.Parameter.empty:
        return prefix + param.name
    text = annotation if isinstance(annotation, str) else annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    return f"{prefix}{param.name}: {text}"
