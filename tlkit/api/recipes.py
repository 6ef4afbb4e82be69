"""A recipe built in Python: keyword sections (or a dict, or a YAML file) -> the same validated :class:`Recipe` as YAML.

There is one validator: everything here is merged into plain recipe data and handed to
:func:`tlkit.recipe.loader.resolve` (and ``overrides`` to :func:`~tlkit.recipe.loader.apply_overrides`,
the CLI's ``--set``), so an unknown keyword, a misspelt option or plugin name gets exactly the
error and did-you-mean a recipe file gets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tlkit.contract.plugin_manager import Plugins, get_plugins
from tlkit.errors import RecipeError
from tlkit.recipe.loader import Recipe, apply_overrides, load_recipe, resolve

RecipeSource = Recipe | Mapping[str, Any] | str | os.PathLike[str] | None
# A plugin section given as a string names the plugin: backbone="efficientnet_lite0" is {"name": ...}.
_PLUGIN_SECTIONS = ("dataset", "backbone", "head")


def make_recipe(
    recipe: RecipeSource = None,
    /,
    *,
    overrides: Sequence[str] = (),
    plugins: Plugins | None = None,
    **sections: Any,
) -> Recipe:
    """A validated recipe from a YAML file, a dict or a :class:`Recipe`, with keyword sections on top.

    ``sections`` are top-level recipe keys (``dataset``, ``backbone``, ``head``, ``images``, ``extract``,
    ``finetune``, ``name``, ``seed``, ``mode``); a mapping is merged key by key into the section it
    names (replaced whole when it names another plugin), a string for ``dataset``/``backbone``/``head``
    is the plugin's name. ``overrides`` are
    ``dotted.key=value`` strings applied last, as ``--set`` does. Every problem is a
    :class:`~tlkit.errors.RecipeError`, worded as for a recipe file.
    """
    plugins = plugins or get_plugins()
    source: Path | None
    if isinstance(recipe, (str, os.PathLike)):
        path = Path(recipe)
        if not sections:
            return load_recipe(path, plugins, overrides)
        from tlkit.recipe.loader import read_yaml

        data, source, default_name = read_yaml(path), path, path.stem
    elif isinstance(recipe, Recipe):
        data, source, default_name = recipe.to_dict(), recipe.source, recipe.name
    elif recipe is None or isinstance(recipe, Mapping):
        data, source, default_name = dict(recipe or {}), None, "recipe"
    else:
        raise RecipeError(f"a recipe is a YAML file's path, a dict or a tlkit Recipe, not a {type(recipe).__name__}")
    merged = merge_sections(data, sections)
    try:
        return resolve(apply_overrides(merged, overrides), plugins, default_name=default_name, source=source)
    except RecipeError as exc:
        if isinstance(recipe, (str, os.PathLike)):  # worded as load_recipe words a file's errors
            raise RecipeError(f"recipe {source}: {exc}") from None
        raise


def merge_sections(data: Mapping[str, Any], sections: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with each keyword section merged in (mappings key by key, deeply; anything else replaces)."""
    merged = dict(data)
    for key, value in sections.items():
        if value is None:
            continue
        if key in _PLUGIN_SECTIONS and isinstance(value, str):
            value = {"name": value}
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping) and not _other_plugin(current, value):
            value = _deep_merge(current, value)
        merged[key] = value
    return merged


def _other_plugin(current: Mapping[str, Any], value: Mapping[str, Any]) -> bool:
    """A section naming another plugin replaces the old one whole: the old plugin's options mean nothing to it."""
    return "name" in value and "name" in current and value["name"] != current["name"]


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in extra.items():
        current = result.get(key)
        result[key] = _deep_merge(current, value) if isinstance(current, Mapping) and isinstance(value, Mapping) else value
    return result
