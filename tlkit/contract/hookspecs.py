"""The hooks a tlkit plugin implements. Specs only: signatures and what they promise.

Every hook hands the plugin a ``register`` callback, so one plugin can add any number of entries.
See docs/plugins.md ("Writing a plugin") for a complete example of each, and ``tlkit.testing``
for the checks that hold an entry to its contract. A plugin whose hook raises or registers a
malformed entry is skipped as a whole, with one warning naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from tlkit.contract.observer import ObserverSpec
    from tlkit.contract.specs import BackboneSpec, DatasetSpec, HeadSpec

hookspec = pluggy.HookspecMarker("tlkit")
hookimpl = pluggy.HookimplMarker("tlkit")


@hookspec
def register_backbones(register: Callable[[BackboneSpec], None]) -> None:
    """Register feature extractors: call ``register(BackboneSpec(...))`` once per backbone."""


@hookspec
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    """Register data set loaders: call ``register(DatasetSpec(...))`` once per loader."""


@hookspec
def register_heads(register: Callable[[HeadSpec], None]) -> None:
    """Register heads trained on features: call ``register(HeadSpec(...))`` once per head."""


@hookspec
def register_observers(register: Callable[[ObserverSpec], None]) -> None:
    """Register run observers (tracking tools): call ``register(ObserverSpec(...))`` once per observer.

    A recipe turns one on by name (``observers: {NAME: {options}}``); its ``build(options)`` returns the
    :class:`~tlkit.contract.observer.Observer` that sees that run's events (start, stages, epochs,
    final metrics, the run directory, end).
    """
