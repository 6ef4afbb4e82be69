"""A plugin's options: the frozen dataclass it declares, filled from a recipe section and checked key by key.

Used by the recipe reader, the plugin kit, saved runs and shard readers alike, so an unknown key gets
the same did-you-mean wherever options are read.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from tlkit.errors import RecipeError, did_you_mean

OptionsT = TypeVar("OptionsT")

_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)  # unknown keys are caught (with suggestions) before validation
    return _ADAPTERS[cls]


def describe_value(value: Any) -> str:
    """A value as a short repr for an error line (at most 40 characters)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The options a plugin declares (fields of its options dataclass)."""
    return list(dataclasses.fields(cls))


def nested_fields(cls: type, loc: Sequence[Any]) -> list[str]:
    """The field names of the dataclass reached from ``cls`` along ``loc`` (``("split",)``), or [] if there is none."""
    current: Any = cls
    for part in loc:
        if not (isinstance(current, type) and dataclasses.is_dataclass(current)):
            return []
        try:
            hints = typing.get_type_hints(current)
        except Exception:  # noqa: BLE001 - a plugin's unresolvable annotation: no suggestion, the error still names the key
            return []
        current = _dataclass_in(hints.get(str(part)))
    return [f.name for f in option_fields(current)] if isinstance(current, type) and dataclasses.is_dataclass(current) else []


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass an annotation holds (``SplitOptions | None``, ``Annotated[SplitOptions, ...]``), if any."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    for argument in typing.get_args(annotation):
        found = _dataclass_in(argument)
        if found is not None:
            return found
    return None


def validate_options(cls: type[OptionsT], data: Mapping[str, Any], path: str, *, also_valid: Sequence[str] = ()) -> OptionsT:
    """Build an instance of the options dataclass ``cls`` from ``data``; errors name ``path.key``.

    ``also_valid`` are keys of the same section handled elsewhere (shown in suggestions only).
    """
    fields_ = [f.name for f in option_fields(cls)]
    names = fields_ + [k for k in also_valid if k not in fields_]
    for key in data:
        if key not in fields_:
            hint = did_you_mean(str(key), names) or (f"; valid keys: {', '.join(names)}" if names else "; it takes no options")
            raise RecipeError(f"unknown key '{path}.{key}'{hint}")
    try:
        result = _adapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        key = f"{path}.{loc}" if loc else path
        if error["type"] == "missing":
            raise RecipeError(f"'{key}' is required") from None
        if error["type"] == "unexpected_keyword_argument":  # a key of a nested section (dataset.split.test_frac)
            known = nested_fields(cls, error["loc"][:-1])
            hint = did_you_mean(str(error["loc"][-1]), known) or (f"; valid keys: {', '.join(known)}" if known else "")
            raise RecipeError(f"unknown key '{key}'{hint}") from None
        raise RecipeError(f"'{key}': {error['msg'].lower()} (got {describe_value(error.get('input'))})") from None
    for key, value in data.items():
        # pydantic's lax mode reads true/false as 1/0; in a recipe that is always a mistake (epochs: true).
        if isinstance(value, bool) and not isinstance(getattr(result, key), bool):
            raise RecipeError(f"'{path}.{key}' must be a number, not {str(value).lower()}")
    return result
