"""``tlkit.fit`` and ``tlkit.compare``: the CLI's ``run`` and ``compare`` as Python calls, on the same engine.

A thin typed front: the recipe is built by :func:`tlkit.api.recipes.make_recipe` (the YAML validator),
the work is :func:`tlkit.run.engine.run` or :func:`tlkit.run.compare.compare`, and the answer wraps
their records. Defaults match the CLI: the run directory is ``runs/<name>-<timestamp>/`` under the
working directory (``out=`` chooses another), and errors are :mod:`tlkit.errors` exceptions, never an
exit. Nothing is printed unless ``progress=True`` (bars through tqdm) or an observer is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tlkit.api.progress import observer_for
from tlkit.api.recipes import RecipeSource, make_recipe
from tlkit.api.results import CompareResult, FitResult
from tlkit.contract.observer import Observer
from tlkit.contract.plugin_manager import get_plugins
from tlkit.errors import RecipeError
from tlkit.recipe.loader import Recipe
from tlkit.saved.run_directory import default_out_dir

Data = str | os.PathLike[str] | Mapping[str, Any] | None


def _recipe(data: Data, recipe: RecipeSource, overrides: Sequence[str], sections: dict[str, Any]) -> Recipe:
    """The recipe of a call: ``data`` is the image folder (``dataset.root``) or a whole ``dataset`` section."""
    if data is not None:
        given = sections.get("dataset")
        section: dict[str, Any] = {"name": given} if isinstance(given, str) else dict(given or {})
        section.update({"root": os.fspath(data)} if isinstance(data, (str, os.PathLike)) else data)
        sections["dataset"] = section
        if recipe is None and "name" not in sections and isinstance(data, (str, os.PathLike)):
            sections["name"] = _folder_name(data)
    return make_recipe(recipe, overrides=overrides, plugins=get_plugins(), **sections)


def _folder_name(data: str | os.PathLike[str]) -> str:
    """The image folder's name as the recipe's name (``photos`` -> ``runs/photos-<time>``), or ``recipe``."""
    name = Path(os.fspath(data)).resolve().name
    return name if name and not name.startswith(".") and name.isprintable() and len(name) <= 100 else "recipe"


def fit(
    data: Data = None,
    /,
    *,
    recipe: RecipeSource = None,
    out: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    progress: bool | Observer = False,
    device: str = "cpu",
    **sections: Any,
) -> FitResult:
    """Train and evaluate as ``tlkit run`` does; the answer holds the metrics, the model and the run directory.

    >>> result = tlkit.fit("photos", backbone="efficientnet_lite0", head="logreg", dataset={"split": {"test_fraction": 0.2}})
    >>> result.metrics.test_accuracy, result.run_dir, result.predict(["photos/cats/a.jpg"])[0].label

    ``data`` is an image folder (``dataset.root``) or a ``dataset`` mapping; ``recipe`` a YAML file, a
    dict or a :class:`~tlkit.recipe.loader.Recipe` to start from; ``sections`` are recipe sections
    (``backbone=``, ``head=``, ``images=``, ``extract=``, ``finetune=``, ``seed=``, ``name=``, ``mode=``)
    merged on top, and ``overrides`` ``--set`` strings applied last. ``out`` is the run directory
    (default ``runs/<name>-<timestamp>`` in the working directory, as the CLI); ``device`` is where
    :attr:`FitResult.model` runs. Raises :class:`~tlkit.errors.TlkitError` subclasses.
    """
    from tlkit.run.engine import run

    built = _recipe(data, recipe, overrides, sections)
    result = run(built, Path(out) if out is not None else None, observer_for(progress))
    return FitResult(recipe=built, run=result, device=device)


def compare(
    data: Data = None,
    /,
    *,
    backbones: str | Sequence[str],
    heads: str | Sequence[str] | None = None,
    recipe: RecipeSource = None,
    out: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    progress: bool | Observer = False,
    **sections: Any,
) -> CompareResult:
    """Rank backbones x heads on one data set, as ``tlkit compare`` does (bootstrap 95% intervals, ties marked).

    ``backbones`` are patterns (``"efficientnet_lite0"``, ``"timm:resnet1*"``, ``"resnet18@none"``);
    ``heads`` head names (default: the recipe's). Everything else is as for :func:`fit`; ``out``
    defaults to ``runs/compare-<name>-<timestamp>``, which holds ``compare.json``/``.csv``/``.png``
    and one run directory per result.
    """
    from tlkit.run.compare import compare as run_compare

    built = _recipe(data, recipe, overrides, sections)
    patterns = [backbones] if isinstance(backbones, str) else list(backbones)
    if not patterns:
        raise RecipeError("backbones: name at least one backbone pattern")
    head_names = _names(heads) if heads is not None else [built.head.name]
    target = Path(out) if out is not None else default_out_dir(f"compare-{built.name}")
    comparison = run_compare(built, patterns, head_names, get_plugins(), target, observer_for(progress))
    return CompareResult(comparison)


def _names(heads: str | Sequence[str]) -> list[str]:
    """``"linear,knn"`` or ``["linear", "knn"]`` -> head names (as ``--heads`` reads them)."""
    items = heads.split(",") if isinstance(heads, str) else list(heads)
    names = [h.strip() for h in items if isinstance(h, str) and h.strip()]
    if not names or len(names) != len(items):
        raise RecipeError(f"heads: give head names such as 'linear' or ['linear', 'knn'] (got {heads!r})")
    return names
