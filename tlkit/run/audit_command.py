"""``tlkit audit RECIPE|RUN``: audit a data set without training, or audit a finished run again.

A RECIPE is prepared and extracted exactly as ``tlkit run`` would (through the feature cache, so a
second audit or a later run costs nothing) and the audit goes to ``--out`` (default
``runs/<name>-audit-<time>/``); with no head there are no test predictions, so leaks are counted but
no accuracy is given. A RUN (a finished run directory) is audited from its ``split.csv`` images, their
features from the run's cache entry (extracted again where the cache lost them), and its
``predictions.csv``; the audit is written into the run directory (replacing the run's own
``audit.json`` and ``audit.csv``) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tlkit.audit.exclusions import relative
from tlkit.audit.findings import AuditInputs, SplitData
from tlkit.audit.report import AuditReport
from tlkit.contract.observer import Observer
from tlkit.errors import RecipeError, RunError
from tlkit.extract.cache import hash_files
from tlkit.recipe.audit_settings import AuditSettings, audit_section
from tlkit.recipe.loader import Recipe
from tlkit.run.audit_stage import run_audit, run_inputs
from tlkit.saved.run_directory import MARKER, default_out_dir
from tlkit.util.regular_files import UnsafeFile, read_regular

MAX_PREDICTIONS_BYTES = 512 << 20


@dataclass(frozen=True)
class AuditResult:
    """Where the audit went and what it found."""

    out_dir: Path
    report: AuditReport


def is_run_directory(path: Path) -> bool:
    """A finished run directory (its completion marker is there), as opposed to a recipe file."""
    return path.is_dir() and (path / MARKER).is_file()


def audit_recipe(recipe: Recipe, out: Path | None = None, observer: Observer | None = None) -> AuditResult:
    """Prepare and extract the recipe's data set (through the cache) and audit it; no head is trained."""
    from tlkit.run import stages
    from tlkit.util.cache_lock import held
    from tlkit.util.locations import cache_root

    observer = observer or Observer()
    with held(cache_root()):
        prepared = stages.prepare(recipe, observer)
        features = stages.extract(prepared, observer)
    report = run_audit(run_inputs(prepared, features), observer)
    folder = out or default_out_dir(f"{recipe.name}-audit")
    report.write(folder)
    return AuditResult(folder, report)


def audit_run(run_dir: Path, plugins: Any, out: Path | None = None, observer: Observer | None = None) -> AuditResult:
    """Audit a finished run's images from its cached features and its test predictions."""
    from tlkit.saved.feature_export import split_arrays
    from tlkit.saved.reader import load_model

    model = load_model(run_dir, plugins)  # verifies split.csv, recipe.yaml and the rest against run.json
    recipe = _run_recipe(run_dir)
    settings = _run_settings(run_dir, recipe)
    observer = observer or Observer()
    observer.stage("reading the run's features")
    arrays, _, _ = split_arrays(model, plugins=plugins)
    root = _run_root(recipe, [p for a in arrays.values() for p in a.paths])
    splits = {split: _split(a.x, a.y, a.paths, root) for split, a in arrays.items()}
    predictions = _predictions(run_dir / "predictions.csv", splits.get("test"), root, list(model.classes))
    inputs = AuditInputs(
        classes=tuple(model.classes), splits=splits, seed=int(recipe.get("seed", 0) or 0), root=root,
        test_predictions=predictions, options=settings.options(),
    )
    report = run_audit(inputs, observer)
    folder = out or run_dir
    report.write(folder)
    return AuditResult(folder, report)


def _run_recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.yaml"
    try:
        data = yaml.safe_load(read_regular(path, 16 << 20).decode("utf-8")) or {}
    except (OSError, UnsafeFile, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunError(f"{path} cannot be read ({exc}); run the recipe again") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a recipe mapping; run the recipe again")
    return data


def _run_settings(run_dir: Path, recipe: dict[str, Any]) -> AuditSettings:
    try:
        return audit_section(recipe.get("audit"))
    except RecipeError as exc:
        raise RunError(f"{run_dir / 'recipe.yaml'}: {exc}") from None


def _run_root(recipe: dict[str, Any], paths: list[str]) -> Path:
    root = (recipe.get("dataset") or {}).get("root") if isinstance(recipe.get("dataset"), dict) else None
    if isinstance(root, str) and root:
        return Path(os.path.abspath(Path(root).expanduser()))
    absolute = [os.path.abspath(p) for p in paths]
    return Path(os.path.commonpath(absolute)) if absolute else Path.cwd()


def _split(x: np.ndarray, y: np.ndarray, paths: list[str], root: Path) -> SplitData:
    files = tuple(Path(p) for p in paths)
    digests = tuple(d or "" for d in hash_files(list(files))) if files else ()
    return SplitData(x=x, y=y, paths=tuple(relative(p, root) for p in paths), files=files, digests=digests)


def _predictions(path: Path, test: SplitData | None, root: Path, classes: list[str]) -> np.ndarray | None:
    """The run's predicted class per test image (``predictions.csv``), or None when it does not match the test split."""
    if test is None:
        return None
    try:
        text = read_regular(path, MAX_PREDICTIONS_BYTES).decode("utf-8")
    except (OSError, UnsafeFile, UnicodeDecodeError):
        return None  # the audit still runs; only the accuracy without leaked images is left out
    index = {name: i for i, name in enumerate(classes)}
    predicted: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        name, label = row.get("path"), row.get("predicted_class")
        if name is not None and label in index:
            predicted[relative(name, root)] = index[str(label)]
    if any(p not in predicted for p in test.paths):
        return None
    return np.array([predicted[p] for p in test.paths], dtype=np.int64)
