"""A warm rerun: when the feature cache answers every image, the backbone is neither built nor converted.

Building a backbone means importing timm or torchvision (which pull in ``torch._dynamo``: seconds),
loading its weights and choosing its runtime (loading a converted model). A rerun whose features
are all cached needs none of it: the features are read by content hash from the cache entry named
by the backbone's *identity* (name, options, weights sha256, preprocessing, decoder, runtime and
its precision, :class:`tlkit.extract.cache.CacheIdentity`).

That identity is only known after building and choosing once, so a full run remembers it
(:func:`remember`) in the cache folder under a key of everything that could change it:

- the recipe's backbone section (name, options, weights request), ``images:`` and the ``extract``
  settings that decide the runtime (runtime, precision, insist_precision, decoder, device), the seed;
- the installed code: the versions of torch, torchvision, timm, OpenVINO, ONNX Runtime, simplejpeg
  and tlkit, every folder on ``sys.path`` (an install or upgrade changes its modification time) and
  tlkit's own source files (an editable checkout being edited);
- where weights are found (the environment variables and the torch hub / Hugging Face folders);
- the weights file itself (path, size, modification time).

The runtime choice is part of the cache key, which is why skipping it needs this care: the memo
records the choice a full run made (after its agreement check against eager fp32), and any change
to what that choice depended on gives another key, so the full path runs again. A memo that does
not read back, or whose record fails its checksum, is ignored. When even one image is missing
from the cache, the full path runs (it has to build the backbone to extract it).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch

from tlkit.contract.observer import Observer
from tlkit.contract.specs import BuiltBackbone
from tlkit.errors import RunError
from tlkit.extract.cache import CacheIdentity, hash_files
from tlkit.extract.pipeline import ImagePipeline
from tlkit.extract.runtimes import Runtime, RuntimeChoice
from tlkit.recipe.loader import Recipe
from tlkit.run import stages
from tlkit.util.atomic import write_atomic
from tlkit.util.hashing import json_sha256
from tlkit.util.installed import file_stamp, installation
from tlkit.util.locations import cache_root
from tlkit.util.regular_files import UnsafeFile, read_regular

FOLDER = "warm"
FORMAT = 1
_MAX_BYTES = 64 * 2**10
_PACKAGES = ("torch", "torchvision", "timm", "openvino", "onnxruntime", "simplejpeg", "tlkit")


class _NotBuilt(torch.nn.Module):
    """Stands in for a backbone the warm path did not build; using it is an error, never silent features."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RunError("the feature cache changed during the run (an entry was removed or damaged); run the recipe again")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed() -> dict[str, Any]:
    """What the installed code and the weights folders look like (cheap: versions and stamps)."""
    return {**installation(), "packages": {name: _version(name) for name in _PACKAGES}}


def memo_key(recipe: Recipe) -> str:
    """The key of ``recipe``'s memo: everything the backbone's identity and runtime choice depend on."""
    resolved = recipe.to_dict()
    settings = recipe.extract
    return json_sha256(
        {
            "format": FORMAT,
            "backbone": resolved["backbone"],
            "images": recipe.images.to_dict(),
            "extract": {k: getattr(settings, k) for k in ("runtime", "precision", "insist_precision", "decoder", "device")},
            "seed": recipe.seed,
            "installed": _installed(),
        }
    )


def _path(key: str) -> Path:
    return cache_root() / FOLDER / f"{key[:32]}.json"


def remember(prepared: stages.Prepared) -> None:
    """Keep what building and choosing gave for this recipe (a full run calls it after extracting); never fails a run."""
    backbone, runtime = prepared.backbone, prepared.runtime
    if not eligible(prepared.recipe) or backbone.saved_with_run or runtime is None or prepared.device.type != "cpu":
        return
    record = {
        "weights_id": backbone.weights_id,
        "weights_path": str(backbone.weights_path) if backbone.weights_path else None,
        "weights_stamp": file_stamp(backbone.weights_path) if backbone.weights_path else None,
        "pipeline": prepared.pipeline.to_dict(),
        "runtime": runtime.choice.to_dict(),
    }
    key = memo_key(prepared.recipe)
    try:
        _path(key).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_path(key), json.dumps({"key": key, "sha256": json_sha256(record), "record": record}).encode())
    except OSError:
        pass  # an unwritable cache only means the next rerun builds the backbone


def eligible(recipe: Recipe) -> bool:
    """Only an extract-mode run with the cache on can be answered from it."""
    return recipe.finetune is None and recipe.extract.cache and recipe.extract.device != "cuda"


def _recall(recipe: Recipe) -> dict[str, Any] | None:
    key = memo_key(recipe)
    try:
        saved = json.loads(read_regular(_path(key), _MAX_BYTES).decode("utf-8"))
        record = saved["record"]
        if saved.get("key") != key or saved.get("sha256") != json_sha256(record):
            return None
    except (OSError, UnsafeFile, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    path = record.get("weights_path")
    if path is not None and file_stamp(path) != record.get("weights_stamp"):
        return None  # the weights file was touched: build and hash it again
    return dict(record)


def warm_prepare(recipe: Recipe, observer: Observer | None = None) -> stages.Prepared | None:
    """A :class:`~tlkit.run.stages.Prepared` without building the backbone, when the cache holds every image; else ``None``.

    Nothing is shown unless the warm path is taken, so a ``None`` leaves the full path to say everything.
    """
    observer = observer or Observer()
    if not eligible(recipe):
        return None
    record = _recall(recipe)
    if record is None:
        return None
    try:
        pipeline = ImagePipeline.from_dict(record["pipeline"])
        choice = RuntimeChoice(**record["runtime"])
    except (KeyError, TypeError, ValueError):
        return None
    weights_path = Path(record["weights_path"]) if record["weights_path"] else None
    built = BuiltBackbone(model=_NotBuilt(), weights_id=str(record["weights_id"]), weights_path=weights_path, saved_with_run=False)
    dataset, root, excluded = stages.load_dataset(recipe, Observer())  # silent: its notes are said below, if this path is taken
    runtime = Runtime(forward=_NotBuilt(), choice=dataclasses.replace(choice, note="", load_s=0.0, conversion_s=0.0, reused=True))
    prepared = stages.Prepared(
        recipe=recipe, backbone=built, dataset=dataset, pipeline=pipeline, device=torch.device("cpu"), runtime=runtime, root=root, excluded=excluded
    )
    if not _all_cached(prepared):
        return None
    stages.seed_everything(recipe.seed)
    for line in excluded.notes() if excluded is not None else ():
        observer.note(line)
    stages.describe(prepared, observer)
    observer.note(f"runtime: {choice.runtime} {choice.precision} (every feature cached: the backbone was not built, the runtime chosen for it before stands)")
    return prepared


def _all_cached(prepared: stages.Prepared) -> bool:
    """Whether the cache entry of this identity holds a verified feature for every image of every split."""
    samples = [s for split in stages.SPLITS for s in prepared.dataset.splits[split]]
    if any(s.member is not None for s in samples):
        return False  # images inside shards: hashed as they stream, not here
    identity: CacheIdentity = stages.cache_identity(prepared)
    store = stages.open_store(identity, feature_dim=prepared.recipe.backbone.spec.feature_dim)
    hashes = hash_files([s.path for s in samples], store.root)
    if any(h is None for h in hashes):
        return False
    found = store.lookup(h for h in hashes if h is not None)
    return len(found) == len(set(hashes))

