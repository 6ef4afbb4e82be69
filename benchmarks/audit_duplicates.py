"""Benchmark the near-duplicate and leak finder (issue 19, must-hold 2) against a plain cosine threshold.

1. Copies ants/bees into ``copy_root`` (real copies: a link would lead outside the data set's folder),
   then places transformed copies of randomly chosen photos in the *other* split (train -> test and
   test -> train, same class): resized to 0.5x, re-encoded at JPEG quality 40, cropped by 10% (a tenth
   of each side, at a random place) and mirrored, ``per_kind`` of each.
2. Extracts EfficientNet-Lite0 features through tlkit (the feature cache is used), runs
   :func:`tlkit.audit.near_duplicates.find_near_duplicates`, and scores its pairs against the planted
   ones: every other pair it reports, among the untouched originals included, is a false pair.
3. The baseline is a plain cosine threshold over all pairs (byte duplicates left out, like the finder),
   at the threshold that gives it the best F1 on this very data (fair to it), and at the highest recall
   it reaches with no false pair.
4. Scale: the finder on ``scale_n`` generated feature vectors of ``dim`` dimensions in 50 clusters (with 100 planted
   pairs of real image files, so the pixel check runs too), in a fresh child process: seconds, the ratio
   to the bare blocked matrix products it cannot avoid (measured in the same process just before), and
   peak memory (the child's VmHWM from /proc/self/status, the bare products' run included).

    python benchmarks/audit_duplicates.py                  # a temporary copy, removed afterwards
    python benchmarks/audit_duplicates.py --per-kind 10 --scale-n 20000 --dim 1280
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_line  # type: ignore[import-not-found]  # benchmarks/machine.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from audit_pictures import copy_of as transformed  # type: ignore[import-not-found]  # noqa: E402  (the tests' four kinds of copy)
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"
KINDS = ("resize", "jpeg40", "crop10", "flip")
SPLIT_FOLDERS = {"train": "train", "test": "val"}  # recipes/hymenoptera.yaml: the test split is val/
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")





def make_copy(source: Path, copy_root: Path, per_kind: int = 10, seed: int = 0, per_class: int | None = None) -> list[tuple[str, str, str]]:
    """Copy ``source`` (or its first ``per_class`` photos per class and split) to ``copy_root`` and plant the copies.

    Returns ``(kind, original, copy)`` as paths relative to ``copy_root``.
    """
    for folder in SPLIT_FOLDERS.values():
        for photo in sorted(p for p in (source / folder).glob("*/*") if p.suffix.lower() in PHOTO_SUFFIXES):
            target = copy_root / photo.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            if per_class is None or len(list(target.parent.iterdir())) < per_class:
                shutil.copyfile(photo, target)
    rng = random.Random(seed)
    originals = {
        split: sorted(p.relative_to(copy_root) for p in (copy_root / folder).glob("*/*") if p.suffix.lower() in PHOTO_SUFFIXES)
        for split, folder in SPLIT_FOLDERS.items()
    }
    chosen = {split: rng.sample(paths, len(KINDS) * per_kind) for split, paths in originals.items()}
    planted = []
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            split = "train" if i % 2 == 0 else "test"
            other = "test" if split == "train" else "train"
            original = chosen[split][k * per_kind + i]
            with Image.open(copy_root / original) as img:
                image, quality = transformed(ImageOps.exif_transpose(img).convert("RGB"), kind, rng)
            target = Path(SPLIT_FOLDERS[other]) / original.parent.name / f"dup-{kind}-{i}-{original.stem}.jpg"
            image.save(copy_root / target, "JPEG", quality=quality)
            planted.append((kind, str(original), str(target)))
    return planted


def lite0_inputs(copy_root: Path) -> Any:
    """The audit's inputs for ``copy_root``: Lite0 features through tlkit (cached), labels, paths, sha256 digests."""
    import dataclasses

    from tlkit.audit.findings import AuditInputs, SplitData
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import load_recipe
    from tlkit.run import stages

    plugins = load_plugins(entry_points=False)
    recipe = load_recipe(REPO / "recipes" / "hymenoptera.yaml", plugins, ["backbone.name=efficientnet_lite0", f"dataset.root={copy_root}"])
    recipe = dataclasses.replace(recipe, extract=dataclasses.replace(recipe.extract, workers=1))
    prepared = stages.prepare(recipe)
    features = stages.extract(prepared)
    splits = {}
    for split in ("train", "test"):
        files = tuple(s.path for s in features.samples[split])
        splits[split] = SplitData(
            x=features.features[split].x.numpy(),
            y=features.features[split].y.numpy(),
            paths=tuple(str(Path(f).relative_to(copy_root)) for f in files),
            files=files,
            digests=tuple(hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files),
        )
    return AuditInputs(classes=tuple(prepared.classes), splits=splits, root=copy_root)


def scores(found: set[frozenset[str]], truth: set[frozenset[str]]) -> dict[str, float]:
    hits = len(found & truth)
    return {
        "pairs": len(found),
        "true": hits,
        "false": len(found - truth),
        "precision": hits / len(found) if found else 1.0,
        "recall": hits / len(truth) if truth else 1.0,
    }


def all_pairs(inputs: Any) -> tuple[list[frozenset[str]], np.ndarray]:
    """Every pair of images (byte duplicates left out) and its feature cosine: the baseline's whole matrix (small data only)."""
    from tlkit.audit.nearest import normalised

    names = [p for d in inputs.splits.values() for p in d.paths]
    digests = [g for d in inputs.splits.values() for g in d.digests]
    units = normalised(np.concatenate([d.x for d in inputs.splits.values()]))
    sims = units @ units.T
    rows, cols = np.triu_indices(len(names), k=1)
    keep = np.array([digests[r] != digests[c] for r, c in zip(rows, cols, strict=True)])
    rows, cols = rows[keep], cols[keep]
    return [frozenset((names[r], names[c])) for r, c in zip(rows, cols, strict=True)], sims[rows, cols]


def cosine_baseline(inputs: Any, truth: set[frozenset[str]]) -> dict[str, Any]:
    """A plain cosine threshold at its best F1 on this data, and at the highest recall with no false pair."""
    pairs, sims = all_pairs(inputs)
    order = np.argsort(-sims, kind="stable")
    is_true = np.array([pairs[i] in truth for i in order])
    tp = np.cumsum(is_true)
    fp = np.cumsum(~is_true)
    f1 = 2 * tp / (np.arange(1, len(order) + 1) + len(truth))
    best = int(np.argmax(f1))
    clean = int(np.argmax(fp > 0)) - 1 if fp[-1] > 0 else len(order) - 1  # the last cut before the first false pair
    result = {"best_f1_threshold": float(sims[order[best]]), "best_f1": scores({pairs[i] for i in order[: best + 1]}, truth)}
    result["no_false_pair_threshold"] = float(sims[order[clean]]) if clean >= 0 else None
    result["no_false_pair"] = scores({pairs[i] for i in order[: clean + 1]}, truth)
    result["cosine_of_planted"] = {"min": float(min(s for p, s in zip(pairs, sims, strict=True) if p in truth))}
    return result


def finder_scores(inputs: Any, planted: list[tuple[str, str, str]], with_bits: bool = True) -> dict[str, Any]:
    from tlkit.audit.near_duplicates import find_near_duplicates

    truth = {frozenset((a, b)) for _, a, b in planted}
    notes: list[str] = []
    start = time.perf_counter()
    findings = find_near_duplicates(inputs, notes)
    seconds = time.perf_counter() - start
    found = {frozenset(f.paths) for f in findings}
    result: dict[str, Any] = {"overall": scores(found, truth), "seconds": seconds, "notes": notes}
    result["per_kind_recall"] = {
        kind: sum(frozenset((a, b)) in found for k, a, b in planted if k == kind) / sum(k == kind for k, _, _ in planted) for kind in KINDS
    }
    result["false_pairs"] = sorted(" <-> ".join(sorted(p)) for p in found - truth)
    result["missed"] = sorted(f"{k}: {a} -> {b}" for k, a, b in planted if frozenset((a, b)) not in found)
    result["leaks"] = sum(f.kind == "leak" for f in findings)
    if with_bits:
        result["bits"] = separation(inputs, truth)
    return result


def separation(inputs: Any, truth: set[frozenset[str]]) -> dict[str, int]:
    """How far apart (bits of 128) the planted pairs are at most, and the other candidate pairs at least."""
    from tlkit.audit.fingerprints import distance
    from tlkit.audit.near_duplicates import candidate_pairs, fingerprints, settings

    candidates = candidate_pairs(inputs, settings({})).pairs
    prints = fingerprints(inputs, list(dict.fromkeys(ref for pair, _ in candidates for ref in pair)), [])
    planted, other = [], []
    for (a, b), _ in candidates:
        names = frozenset((inputs.splits[a[0]].paths[a[1]], inputs.splits[b[0]].paths[b[1]]))
        (planted if names in truth else other).append(distance(prints[a], prints[b]))
    return {"candidates": len(candidates), "planted_max": max(planted, default=-1), "others_min": min(other, default=-1)}


def _generated_image(path: Path, rng: random.Random) -> None:
    """A 160 x 120 picture with structure (gradient, shapes, text) for the scale run's planted pairs."""
    from PIL import ImageDraw

    base = np.linspace(0, 255, 160, dtype=np.float32)[None, :, None] * np.array([rng.random(), rng.random(), rng.random()], dtype=np.float32)
    image = Image.fromarray(np.broadcast_to(base, (120, 160, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randint(0, 140), rng.randint(0, 100)
        draw.ellipse((x, y, x + rng.randint(10, 60), y + rng.randint(10, 60)), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    draw.text((rng.randint(0, 100), rng.randint(0, 100)), f"{rng.randint(0, 10**6)}", fill=(255, 255, 255))
    image.save(path, "JPEG", quality=90)


def scale_inputs(root: Path, n: int, dim: int, pairs: int = 100, seed: int = 0) -> Any:
    """``n`` random unit-ish feature vectors in two splits; ``pairs`` of them are real image files with a copy across splits."""
    from tlkit.audit.findings import AuditInputs, SplitData

    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    n_test = n // 5
    # 50 clusters ("classes" of look-alikes): an image's nearest neighbours are at cosine ~0.45, above the
    # finder's default minimum, so the candidate stage has hundreds of thousands of pairs to gather and cap.
    centres = rng.standard_normal((50, dim), dtype=np.float32)
    x = centres[rng.integers(0, 50, n)] + 1.1 * rng.standard_normal((n, dim), dtype=np.float32)
    files: list[Path | None] = [None] * n
    digests = [f"generated-{i}" for i in range(n)]
    for p in range(pairs):
        a, b = p, n_test + p  # a test row and a train row
        files[a], files[b] = root / f"test-{p}.jpg", root / f"train-{p}.jpg"
        _generated_image(root / f"train-{p}.jpg", pyrng)
        with Image.open(root / f"train-{p}.jpg") as img:
            ImageOps.mirror(img).save(root / f"test-{p}.jpg", "JPEG", quality=40)
        x[a] = x[b] + 0.2 * rng.standard_normal(dim, dtype=np.float32)
        digests[a], digests[b] = (hashlib.sha256(Path(files[i]).read_bytes()).hexdigest() for i in (a, b))  # type: ignore[arg-type]
    y = rng.integers(0, 2, n)
    names = [f"img-{i}" for i in range(n)]
    split = {"test": slice(0, n_test), "train": slice(n_test, n)}
    data = {s: SplitData(x=x[r], y=y[r], paths=tuple(names[r]), files=tuple(files[r]), digests=tuple(digests[r])) for s, r in split.items()}
    return AuditInputs(classes=("a", "b"), splits=data, root=root)


def bare_products_seconds(inputs: Any) -> float:
    """The baseline: only the similarity products the search needs (all rows by all rows, a block at a time), nothing kept."""
    from tlkit.audit.nearest import block_rows, normalised

    units = normalised(np.concatenate([d.x for d in inputs.splits.values()]))
    rows = block_rows(len(units))
    start = time.perf_counter()
    for first in range(0, len(units), rows):
        units[first : first + rows] @ units.T
    return time.perf_counter() - start


def _scale_child(root: str, n: int, dim: int, queue: Any) -> None:
    from tlkit.audit.near_duplicates import find_near_duplicates

    inputs = scale_inputs(Path(root), n, dim)
    bare = bare_products_seconds(inputs)
    notes: list[str] = []
    start = time.perf_counter()
    findings = find_near_duplicates(inputs, notes)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    queue.put(
        {
            "n": n,
            "dim": dim,
            "seconds": seconds,
            "bare_products_seconds": bare,
            "ratio_to_bare_products": seconds / bare,
            "peak_mb": peak_kb / 1024,
            "leaks_found": sum(f.kind == "leak" for f in findings),
            "planted": 100,
            "notes": notes,
        }
    )


def scale_run(n: int, dim: int) -> dict[str, Any]:
    """The finder on ``n`` x ``dim`` generated features in a fresh process: time and that process's peak memory."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory(prefix="tlkit-dups-scale-") as root:
        child = context.Process(target=_scale_child, args=(root, n, dim, queue))
        child.start()
        result = queue.get()
        child.join()
    return result


def duplicate_benchmark(
    copy_root: Path, source: Path = DEFAULT_DATA, per_kind: int = 10, seed: int = 0, scale_n: int = 20000, dim: int = 1280
) -> dict[str, Any]:
    """Plant copies in a copy of ants/bees under ``copy_root`` and score the finder and the baseline on them; then the scale run."""
    planted = make_copy(source, copy_root, per_kind, seed)
    inputs = lite0_inputs(copy_root)
    truth = {frozenset((a, b)) for _, a, b in planted}
    result: dict[str, Any] = {"cpu": cpu_line(), "images": sum(len(d.paths) for d in inputs.splits.values()), "planted": len(planted)}
    result["finder"] = finder_scores(inputs, planted)
    result["cosine_baseline"] = cosine_baseline(inputs, truth)
    if scale_n:
        result["scale"] = scale_run(scale_n, dim)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-kind", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale-n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=1280)
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="tlkit-dups-") as tmp:
        result = duplicate_benchmark(Path(tmp), args.data, args.per_kind, args.seed, args.scale_n, args.dim)
    import json

    json.dump(result, sys.stdout, indent=1)
    print()
    print(cpu_line())


if __name__ == "__main__":
    main()
