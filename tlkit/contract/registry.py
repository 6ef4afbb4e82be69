"""A name -> spec table per kind of plugin entry: add once, look up with suggestions, list by pattern.

A name an incompatible plugin registered is *refused*: not listed and not usable, but looking it up
says why in one line (which plugin, what changed) instead of "unknown backbone".
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
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
        return dict(self._refused)

    def get(self, name: str) -> SpecT:
        """The spec called ``name``, or an error suggesting the closest names."""
        try:
            return self._specs[name]
        except KeyError:
            if name in self._refused:
                raise RegistryError(self._refused[name]) from None
            hint = did_you_mean(name, self._specs)
            raise RegistryError(
                f"unknown {self.kind} '{name}'{hint or f'; run `tlkit {self.kind}s` to list them'}"
            ) from None

    def names(self, pattern: str | None = None, *, include_hidden: bool = False) -> list[str]:
        """Sorted names matching a shell-style ``pattern`` (hidden entries only when a pattern is given)."""
        if pattern is None:
            return sorted(n for n, s in self._specs.items() if include_hidden or not getattr(s, "hidden", False))
        return sorted(n for n in self._specs if fnmatch.fnmatchcase(n, pattern))

    def hidden_count(self) -> int:
        """How many entries a plain listing leaves out (large catalogues such as every timm model)."""
        return sum(1 for s in self._specs.values() if getattr(s, "hidden", False))

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[SpecT]:
        return iter(self._specs[n] for n in sorted(self._specs))

    def __len__(self) -> int:
        return len(self._specs)
