"""A name -> spec table per kind of plugin entry: add once, look up with suggestions, list by pattern.

A name an incompatible plugin registered is *refused*: not listed and not usable, but looking it up
says why in one line (which plugin, what changed) instead of "unknown backbone".
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

from tlkit.errors import RegistryError, did_you_mean


class _Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def plugin(self) -> str: ...


SpecT = TypeVar("SpecT", bound=_Named)


class Registry(Generic[SpecT]):
    """Specs of one kind (``"backbone"``, ``"dataset"``, ``"head"``) keyed by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, SpecT] = {}
        self._refused: dict[str, str] = {}
        self._pending: list[tuple[tuple[str, ...], Callable[[], None]]] = []

    def defer(self, patterns: tuple[str, ...], load: Callable[[], None]) -> None:
        """Entries a plugin not yet imported will add: ``load()`` imports it when a name matching ``patterns`` is asked for.

        A built-in catalogue (every torchvision or timm model) costs seconds of imports; a run naming
        another backbone never pays them. Listing, iterating or an unknown name loads everything first.
        """
        self._pending.append((patterns, load))

    def settle(self) -> None:
        """Load the deferred plugins whose patterns match a name already here (so a duplicate is found now)."""
        for name in list(self._specs):
            if self._pending:
                self._load_pending(name)

    def _load_pending(self, name: str | None = None) -> None:
        """Run the deferred loaders whose patterns match ``name`` (every one when ``name`` is None)."""
        ready = [(p, load) for p, load in self._pending if name is None or any(fnmatch.fnmatchcase(name, x) for x in p)]
        for item in ready:
            self._pending.remove(item)
            item[1]()

    def add(self, spec: SpecT) -> None:
        """Add ``spec``; a name registered twice is an error naming both plugins."""
        if not isinstance(spec.name, str) or not spec.name.strip():
            raise RegistryError(f"{self.kind} from plugin '{spec.plugin}' has no name")
        existing = self._specs.get(spec.name)
        if existing is not None:
            raise RegistryError(
                f"{self.kind} '{spec.name}' is registered by both plugin '{existing.plugin}' and plugin "
                f"'{spec.plugin}'; uninstall one of them or limit plugins with TLKIT_LOAD_PLUGINS"
            )
        self._specs[spec.name] = spec
        self._refused.pop(spec.name, None)  # a compatible plugin's entry wins over an incompatible one's

    def refuse(self, name: str, reason: str) -> None:
        """Know ``name`` without a usable spec: :meth:`get` raises ``reason`` (one line) for it.

        For the entries of a plugin that does not fit this tlkit's plugin API; a name a compatible
        plugin registers (before or after) is used instead.
        """
        if name not in self._specs:
            self._refused.setdefault(name, reason)

    def refused(self) -> dict[str, str]:
        """Refused names and why: the entries of incompatible plugins."""
        self._load_pending()
        return dict(self._refused)

    def get(self, name: str) -> SpecT:
        """The spec called ``name``, or an error suggesting the closest names."""
        if name not in self._specs:
            self._load_pending(name)
        try:
            return self._specs[name]
        except KeyError:
            self._load_pending()  # the suggestions come from every entry
            if name in self._specs:
                return self._specs[name]
            if name in self._refused:
                raise RegistryError(self._refused[name]) from None
            hint = did_you_mean(name, self._specs)
            raise RegistryError(
                f"unknown {self.kind} '{name}'{hint or f'; run `tlkit {self.kind}s` to list them'}"
            ) from None

    def names(self, pattern: str | None = None, *, include_hidden: bool = False) -> list[str]:
        """Sorted names matching a shell-style ``pattern`` (hidden entries only when a pattern is given)."""
        self._load_pending()
        if pattern is None:
            return sorted(n for n, s in self._specs.items() if include_hidden or not getattr(s, "hidden", False))
        return sorted(n for n in self._specs if fnmatch.fnmatchcase(n, pattern))

    def hidden_count(self) -> int:
        """How many entries a plain listing leaves out (large catalogues such as every timm model)."""
        self._load_pending()
        return sum(1 for s in self._specs.values() if getattr(s, "hidden", False))

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._specs:
            self._load_pending(name)
        return name in self._specs

    def __iter__(self) -> Iterator[SpecT]:
        self._load_pending()
        return iter(self._specs[n] for n in sorted(self._specs))

    def __len__(self) -> int:
        self._load_pending()
        return len(self._specs)
