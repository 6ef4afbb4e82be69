"""The recipe's ``observers:`` section: which run observers (tracking tools) see this run, with their options.

``observers: {mlflow: {experiment: ants}}`` turns on the observer a plugin registered as ``mlflow``
(hook ``register_observers``); ``observers: {mlflow: {}}`` (or ``mlflow: null``) takes its defaults.
Names are checked against the registry (did-you-mean) and options against the plugin's dataclass
when the recipe is read, like every other section, so a misspelt tracking option fails before the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlkit.contract.observer import ObserverSpec
from tlkit.contract.options import describe_value, validate_options
from tlkit.contract.registry import Registry
from tlkit.contract.specs import PluginOptions
from tlkit.errors import RecipeError, TlkitError, did_you_mean

MAX_OBSERVERS = 16


@dataclass(frozen=True)
class ObserverChoice:
    """An observer a recipe turned on: its spec and its validated options."""

    spec: ObserverSpec[PluginOptions]
    options: PluginOptions

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


def observers_section(data: Mapping[str, Any], registry: Registry[ObserverSpec[PluginOptions]]) -> tuple[ObserverChoice, ...]:
    """The validated ``observers:`` section of raw recipe ``data`` (empty when absent)."""
    section = data.get("observers")
    if section is None:
        return ()
    if not isinstance(section, Mapping):
        raise RecipeError(f"'observers' must be a mapping of observer name to its options, e.g. 'observers: {{mlflow: {{}}}}' (got {describe_value(section)})")
    if len(section) > MAX_OBSERVERS:
        raise RecipeError(f"'observers' names {len(section)} observers; at most {MAX_OBSERVERS}")
    chosen = []
    for name, options in section.items():
        spec = _spec(registry, str(name))
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise RecipeError(f"'observers.{name}' must be a mapping of options ({{}} for the defaults), not {describe_value(options)}")
        chosen.append(ObserverChoice(spec, validate_options(spec.options, options, f"observers.{name}")))
    return tuple(chosen)


def _spec(registry: Registry[ObserverSpec[PluginOptions]], name: str) -> ObserverSpec[PluginOptions]:
    known = registry.names()
    if name not in known and name not in registry.refused():
        hint = did_you_mean(name, known) or (f"; installed observers: {', '.join(known)}" if known else "; no observer plugin is installed")
        raise RecipeError(f"'observers': unknown observer '{name}'{hint}")
    try:
        return registry.get(name)
    except TlkitError as exc:  # an incompatible plugin's observer: the line says why
        raise RecipeError(f"'observers.{name}': {exc}") from None
