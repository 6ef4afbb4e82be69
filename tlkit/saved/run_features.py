"""Features of image files for a saved run, the way the run itself got them: its cache, its runtime.

``tlkit predict`` and ``tlkit.load(run).predict(...)`` used to push every image through eager torch.
A run already knows a faster way, and where the answers may already be:

1. **The feature cache.** ``model.json`` records the run's cache identity (``cache_extra``: decoder,
   runtime and its precision); with the seed in ``recipe.yaml`` it names the very entry the run
   filled. An image whose bytes are there (sha256) is not decoded at all. The entry is trusted only
   if its ``entry.json`` states that identity; every chunk read is checked (dimension, checksum,
   finite values) by :class:`tlkit.extract.cache.FeatureStore`, and a damaged one is dropped.
2. **The run's runtime** (OpenVINO, ONNX Runtime) for images the cache does not hold, chosen by
   :func:`tlkit.extract.runtimes.choose_runtime` with the run's own precision: a stored converted
   model is reused with its agreement verdict, a new conversion is checked against eager fp32 on
   the images being classified, and anything that does not agree falls back to torch, as in a run.
3. **The decoding workers** of extraction (:func:`tlkit.extract.features.extract`).

The backbone is built only when an image is missing from the cache, so classifying images the run
has seen needs neither timm nor the converted model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from tlkit.errors import RunError
from tlkit.extract.features import Extraction, extract, extract_cached, prepare_model, resolve_device
from tlkit.saved.run_directory import read_run_file
from tlkit.util.regular_files import UnsafeFile, read_regular

if TYPE_CHECKING:
    from tlkit.extract.cache import FeatureStore
    from tlkit.extract.runtimes import Runtime
    from tlkit.saved.reader import SavedModel

CONVERTED = ("openvino", "onnxruntime")
_ENTRY_BYTES = 1 * 2**20  # an entry.json is a few hundred bytes


def recipe_settings(run_dir: Path) -> tuple[bool, int]:
    """(``extract.cache``, ``seed``) from the run's ``recipe.yaml`` (read bounded, parsed safely)."""
    path = run_dir / "recipe.yaml"
    try:
        recipe = yaml.safe_load(read_run_file(path).decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} cannot be read ({type(exc).__name__}); run the recipe again") from None
    extract_section = recipe.get("extract") if isinstance(recipe, dict) else None
    if not isinstance(recipe, dict) or not isinstance(extract_section or {}, dict):
        raise RunError(f"{path} is not a recipe; run the recipe again")
    seed = recipe.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RunError(f"{path}: 'seed' must be a whole number, not {seed!r}; run the recipe again")
    return bool((extract_section or {}).get("cache", True)), seed


def run_store(model: SavedModel, *, create: bool = True) -> FeatureStore | None:
    """The run's own feature-cache entry, or ``None`` (the run's cache was off, or the entry is not that identity's).

    ``create=False`` answers ``None`` where the entry does not exist instead of making an empty one.
    """
    from tlkit.extract.cache import META, CacheIdentity, FeatureStore, cache_root
    from tlkit.util.locations import FEATURES_DIR

    cache_on, seed = recipe_settings(model.run_dir)
    if not cache_on:
        return None
    backbone, pipeline = model.manifest.backbone, model.pipeline
    identity = CacheIdentity(
        backbone=backbone.name, weights_id=backbone.weights_sha256, preprocessing=pipeline.preprocessing, precision=pipeline.precision,
        seed=seed, options=backbone.options, background=pipeline.background,
    ).with_recorded(model.manifest.features.cache_extra)
    root = cache_root()
    folder = root / FEATURES_DIR / identity.key
    if not folder.is_dir():
        return None if not create else FeatureStore(root, identity, feature_dim=model.manifest.features.dim)
    if not _states(folder / META, identity.to_dict()):
        return None  # an entry under this name that says it is another extractor's: not the run's features
    return FeatureStore(root, identity, feature_dim=model.manifest.features.dim)


def _states(path: Path, identity: dict[str, object]) -> bool:
    """Whether ``entry.json`` exists and records exactly ``identity`` (a missing one is written by the store)."""
    try:
        recorded = json.loads(read_regular(path, _ENTRY_BYTES).decode("utf-8")).get("identity")
    except FileNotFoundError:
        return True
    except (OSError, UnsafeFile, ValueError, AttributeError, RecursionError):
        return False
    return bool(recorded == json.loads(json.dumps(identity)))


def run_runtime(model: SavedModel, probe_paths: Sequence[Path], device: torch.device) -> Runtime:
    """The runtime the run extracted with (``model.json``'s ``cache_extra``), chosen with the same agreement check.

    ``probe_paths`` (images about to be classified) are the probe batch if the backbone must be
    converted here (no stored converted model): their eager fp32 features are the reference.
    """
    from tlkit.extract.cache import cache_root
    from tlkit.extract.runtimes import choose_runtime
    from tlkit.extract.runtimes.stage import PROBE_IMAGES, _decoded

    recorded = model.manifest.features.cache_extra
    requested = recorded.get("runtime", "torch")
    backbone = prepare_model(model.backbone, device)
    crop = model.pipeline.preprocessing.crop_size
    return choose_runtime(
        backbone,
        requested=requested if requested in CONVERTED else "torch",
        precision=recorded.get("precision", model.pipeline.precision),
        device=device,
        identity={"backbone": model.manifest.backbone.name, "options": dict(model.manifest.backbone.options)},
        input_shape=(3, crop, crop),
        probe=lambda: _decoded(list(probe_paths), model.pipeline, PROBE_IMAGES),
        cache_root=cache_root(),
    )


def run_features(
    model: SavedModel,
    paths: Sequence[Path],
    *,
    device: str = "auto",
    workers: int | None = None,
    cache: bool = True,
    on_batch: Callable[[int], None] = lambda n: None,
) -> tuple[Extraction, str]:
    """Features of ``paths`` (input order, bad files listed) and the note on what ran ("" when nothing was computed)."""
    store = run_store(model) if cache else None
    if store is not None:
        from tlkit.extract.cache import hash_files

        hashes = hash_files(paths, store.root)
        found = store.lookup(h for h in hashes if h is not None)
    else:
        hashes, found = [None] * len(paths), {}
    missing = [i for i, h in enumerate(hashes) if h is None or h not in found]
    on_batch(len(paths) - len(missing))
    computed, note = _compute(model, [paths[i] for i in missing], store, device, workers, on_batch) if missing else (None, "")
    rows: dict[int, torch.Tensor] = {i: found[h] for i, h in enumerate(hashes) if h is not None and h in found}
    bad: list[tuple[Path, str]] = []
    if computed is not None:
        rows.update((missing[k], computed.features[j]) for j, k in enumerate(computed.kept))
        bad = computed.bad
    kept = sorted(rows)
    features = torch.stack([rows[i] for i in kept]) if kept else torch.empty(0, 0)
    extracted = computed.extracted if computed is not None else 0
    return Extraction(features=features, kept=kept, bad=bad, cached=len(kept) - extracted, extracted=extracted), note


def _compute(
    model: SavedModel, paths: list[Path], store: FeatureStore | None, device: str, workers: int | None, on_batch: Callable[[int], None]
) -> tuple[Extraction, str]:
    """Extract ``paths`` through the run's runtime; new features go to the run's entry only if that runtime ran."""
    from contextlib import contextmanager

    target = resolve_device(device)
    runtime = run_runtime(model, paths, target)
    recorded = model.manifest.features.cache_extra
    same = runtime.choice.runtime == recorded.get("runtime", "torch") and runtime.choice.precision == recorded.get("precision", model.pipeline.precision)
    backbone = prepare_model(model.backbone, target)
    options = {"batch_size": model.batch_size, "workers": workers, "device": target, "forward": runtime.forward}
    if store is not None and same and not store.read_only:

        @contextmanager
        def task(total: int):  # type: ignore[no-untyped-def]
            yield on_batch

        return extract_cached(backbone, paths, model.pipeline, store, task=task, **options), runtime.choice.note  # type: ignore[arg-type]
    return extract(backbone, paths, model.pipeline, on_batch=on_batch, **options), runtime.choice.note  # type: ignore[arg-type]
