"""``--set KEY=VALUE`` items the shell cut in pieces: ``--set dataset.split={test_fraction: 0.2}`` unquoted.

The shell splits an unquoted item at its spaces, so tlkit receives ``dataset.split={test_fraction:``
and, separately, ``0.2}``. A flow mapping or list whose brackets do not close is the sign; the error
then says to quote the whole item, showing it quoted. Standard library only: the CLI's usage errors
(:mod:`tlkit.cli.usage`) use it without importing torch.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

_PAIRS = {"{": "}", "[": "]"}


def unbalanced(value: str) -> bool:
    """Whether ``value`` opens a ``{...}`` or ``[...]`` (or a quote) that it does not close."""
    return _closers(value) is None or bool(_closers(value))


def _closers(value: str) -> str | None:
    """What would close ``value``'s open brackets and quote (``"}"``), or None where it closes one never opened."""
    stack: list[str] = []
    quote = ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in _PAIRS:
            stack.append(_PAIRS[char])
        elif char in "}]" and (not stack or stack.pop() != char):
            return None
    return quote + "".join(reversed(stack))


def quoting_hint(item: str, rest: Sequence[str] = ()) -> str:
    """``''`` for a whole item; else ``"; the shell split it at a space: quote the whole item, --set '...'"``.

    ``rest`` are the pieces the shell split off after it (the CLI's "extra arguments"), so the
    hint can show the item as it was meant; without them it shows where the rest goes.
    """
    _, sep, value = item.partition("=")
    if not sep or not unbalanced(value):
        return ""
    whole = " ".join([item, *rest]) if rest else f"{item} ...{_closers(value) or ''}"
    return f"; the shell split it at a space: quote the whole item, --set {shlex.quote(whole)}"
