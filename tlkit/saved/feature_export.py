"""``tlkit features RUN --out FILE.npz|.parquet``: a run's train and test features for other tools.

For scikit-learn (``.npz``: ``x_train``, ``y_train``, ``paths_train``, the same for ``test``, and
``classes``) or pandas (``.parquet``: one row per image with ``split``, ``path``, ``label``,
``class`` and ``features``, a fixed-size list). The images are those of the run's ``split.csv``,
with the run's backbone, preprocessing and precision; features come from the run's feature-cache
entry where it still holds them (the usual case: nothing is recomputed) and are extracted otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from tlkit.errors import OutputError, RunError, TlkitError
from tlkit.saved.reader import SavedModel, load_model
from tlkit.saved.splits import read_split
from tlkit.util.atomic import atomic_path

if TYPE_CHECKING:
    from tlkit.contract.specs import Sample
    from tlkit.extract.cache import FeatureStore

FORMATS = (".npz", ".parquet")


@dataclass(frozen=True)
class SplitArrays:
    x: np.ndarray
    y: np.ndarray
    paths: list[str]


@dataclass(frozen=True)
class FeatureExport:
    path: Path
    counts: dict[str, int]
    feature_dim: int
    cached: int
    skipped: int


def _store(model: SavedModel) -> FeatureStore | None:
    """The run's feature-cache entry (the identity the run's extraction used), or None when its cache was off."""
    from tlkit.saved.run_features import run_store

    return run_store(model)


def _shard_members(model: SavedModel, plugins: Any, listed: dict[str, list[tuple[Path, str]]]) -> dict[str, Sample] | None:
    """The run's samples by shown path when its images are shard members (listed again by the run's loader), else None.

    A shard member's ``split.csv`` path is only a name (``<shard>/<member>``), never a file to open. The run
    directory is not trusted: its recipe's ``allow_pipe`` is ignored, so re-listing runs no command.
    """
    first = next((path for rows in listed.values() for path, _ in rows), None)
    if first is None or plugins is None or not (any(p.is_file() for p in first.parents) or re.match(r"^[A-Za-z][\w+.-]+:", str(first))):
        return None  # a shard member's shown path lies under its shard (a file) or its URL
    from tlkit.contract.options import validate_options

    path = model.run_dir / "recipe.yaml"
    try:
        dataset = dict((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("dataset") or {})
        spec = plugins.datasets.get(str(dataset.pop("name")))
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as exc:
        raise RunError(f"{path} cannot be read ({exc}); run the recipe again") from None
    dataset.pop("allow_pipe", None)
    loaded = spec.load(validate_options(spec.options, dataset, "dataset"))
    samples = {str(s.path): s for split in loaded.splits.values() for s in split}
    if not any(s.member is not None for s in samples.values()):
        return None
    return samples


def split_arrays(
    model: SavedModel, task: Callable[[int], AbstractContextManager[Callable[[int], None]]] | None = None, plugins: Any = None
) -> tuple[dict[str, SplitArrays], int, int]:
    """Features of every split in ``split.csv``: ``({split: arrays}, cached count, skipped count)``.

    With ``plugins``, a run whose images are shard members gets them from its shards (listed again), never from files.
    """
    from tlkit.extract.features import extract_cached, prepare_model, resolve_device
    from tlkit.extract.shard_members import extract_members_cached

    listed = read_split(model.run_dir / "split.csv")
    members = _shard_members(model, plugins, listed)
    index = {name: i for i, name in enumerate(model.classes)}
    store = _store(model)
    device = resolve_device("auto")
    backbone = prepare_model(model.backbone, device)
    result: dict[str, SplitArrays] = {}
    cached = skipped = 0
    for split, rows in listed.items():
        paths = [path for path, _ in rows]
        extra: dict[str, Any] = {"task": task} if task is not None else {}
        if members is not None:
            if any(str(p) not in members for p in paths):
                missing = next(p for p in paths if str(p) not in members)
                raise RunError(f"{missing} is no longer in the run's shards (were they rewritten?); run the recipe again")
            got = extract_members_cached(backbone, [members[str(p)] for p in paths], model.pipeline, store, batch_size=model.batch_size, device=device, **extra)
        else:
            got = extract_cached(backbone, paths, model.pipeline, store, batch_size=model.batch_size, device=device, **extra)
        cached += got.cached
        skipped += len(paths) - len(got.kept)
        result[split] = SplitArrays(
            x=got.features.numpy().astype(np.float32),
            y=np.array([index[rows[i][1]] for i in got.kept], dtype=np.int64),
            paths=[str(paths[i]) for i in got.kept],
        )
    return result, cached, skipped


def _write_npz(target: Path, arrays: dict[str, SplitArrays], classes: list[str]) -> None:
    data: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, a in arrays.items():
        data.update({f"x_{split}": a.x, f"y_{split}": a.y, f"paths_{split}": np.array(a.paths)})
    with target.open("wb") as fh:
        np.savez(fh, **data)  # type: ignore[arg-type]


def _write_parquet(target: Path, arrays: dict[str, SplitArrays], classes: list[str]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from tlkit.util.install_hint import install_hint

        raise TlkitError(f"writing .parquet needs pyarrow: {install_hint('parquet')} (or write .npz)") from None
    dim = next((a.x.shape[1] for a in arrays.values() if a.x.ndim == 2 and len(a.x)), 0)
    splits = [s for s, a in arrays.items() for _ in a.paths]
    x = np.concatenate([a.x.reshape(len(a.paths), dim) for a in arrays.values()]) if splits else np.zeros((0, dim), np.float32)
    labels = np.concatenate([a.y for a in arrays.values()]) if splits else np.zeros(0, np.int64)
    table = pa.table(
        {
            "split": splits,
            "path": [p for a in arrays.values() for p in a.paths],
            "label": labels,
            "class": [classes[int(y)] for y in labels],
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
        }
    )
    pq.write_table(table.replace_schema_metadata({"classes": json.dumps(classes)}), str(target))


def write_features(run_dir: Path | str, out: Path, plugins: Any, task: Callable[[int], AbstractContextManager[Callable[[int], None]]] | None = None) -> FeatureExport:
    """Write the run's features to ``out`` (``.npz`` or ``.parquet``, by its suffix), atomically."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise TlkitError(f"--out {out}: give a file ending in .npz (numpy, scikit-learn) or .parquet (pandas)")
    model = load_model(run_dir, plugins)
    arrays, cached, skipped = split_arrays(model, task, plugins)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            (_write_npz if out.suffix.lower() == ".npz" else _write_parquet)(tmp, arrays, model.classes)
    except OSError as exc:
        raise OutputError(f"cannot write {out} ({exc.strerror or exc}); choose another --out") from None
    dim = next((int(a.x.shape[1]) for a in arrays.values() if a.x.ndim == 2 and len(a.x)), 0)
    return FeatureExport(path=out, counts={s: len(a.paths) for s, a in arrays.items()}, feature_dim=dim, cached=cached, skipped=skipped)
