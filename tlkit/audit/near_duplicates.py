"""Near-duplicates within a split and copies across train/test (leaks): features propose, pixels decide.

1. Candidates: each image's ``near_duplicate_neighbours`` nearest images by cosine similarity of its
   cached features (blocked, :mod:`tlkit.audit.nearest`: no N x N matrix), within its split and in
   every other split, kept when the cosine is at least ``near_duplicate_min_cosine``. Pairs of equal
   content digest are byte duplicates, reported by the exact-duplicate finder, and skipped here.
2. Check: only the candidates' files are opened. Each is read once (a regular file inside the data
   set's root, size-bounded), its sha256 compared with the digest its features were cached under (a
   file replaced since is not trusted), decoded by tlkit's decoder (decompression-bomb limit from the
   header) and fingerprinted (:mod:`tlkit.audit.fingerprints`). A pair is a copy when its perceptual
   hashes are at most ``near_duplicate_max_bits`` apart. A file that fails any step is skipped with a
   note, never an exception.

The options (``AuditInputs.options``, the recipe's ``audit:`` section) and their defaults are
:data:`DEFAULTS`. The result is deterministic: no randomness, ties broken by position.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.audit.findings import AuditInputs, Finding, SplitData
from tlkit.audit.fingerprints import Fingerprint, distance, fingerprint_bytes
from tlkit.audit.nearest import normalised, top_k
from tlkit.errors import RecipeError

DEFAULTS: dict[str, float] = {
    "near_duplicate_neighbours": 10,  # candidates per image and split: the k of the nearest-neighbour search
    "near_duplicate_min_cosine": 0.4,  # feature cosine a candidate pair needs before its pixels are looked at
    "near_duplicate_max_bits": 16,  # pHash + dHash bits (of 128) two copies may differ by, at the best window and mirror
    "near_duplicate_max_pairs": 20000,  # pixel checks at most (the most similar pairs first); the rest are noted
}
_LIMITS = {
    "near_duplicate_neighbours": (1, 1000),
    "near_duplicate_min_cosine": (-1.0, 1.0),
    "near_duplicate_max_bits": (0, 128),
    "near_duplicate_max_pairs": (0, 10**8),
}

Ref = tuple[str, int]  # (split, row)
_IN_SHARD = "inside a shard"


@dataclass(frozen=True)
class Settings:
    """The finder's options, checked."""

    neighbours: int
    min_cosine: float
    max_bits: int
    max_pairs: int


def settings(options: dict[str, float]) -> Settings:
    """:data:`DEFAULTS` overridden by ``options``; a value out of range is a :class:`RecipeError` naming the key."""
    values = {}
    for key, default in DEFAULTS.items():
        value = options.get(key, default)
        low, high = _LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise RecipeError(f"audit.{key} must be a number from {low} to {high}, not {value!r} (default {default:g})")
        values[key] = value
    return Settings(
        neighbours=int(values["near_duplicate_neighbours"]),
        min_cosine=float(values["near_duplicate_min_cosine"]),
        max_bits=int(values["near_duplicate_max_bits"]),
        max_pairs=int(values["near_duplicate_max_pairs"]),
    )


def find_near_duplicates(inputs: AuditInputs, notes: list[str] | None = None) -> list[Finding]:
    """Pairs of copies: kind ``near_duplicate`` within a split, ``leak`` across splits (the train image first).

    ``notes`` (when given) receives one line per file that could not be checked and why, and one when
    candidates were left unchecked; the findings are sorted by kind, score (best first) and paths.
    """
    notes = notes if notes is not None else []
    chosen = settings(inputs.options)
    candidates = candidate_pairs(inputs, chosen)
    if candidates.total > len(candidates.pairs):
        notes.append(f"near-duplicates: {candidates.total} candidate pairs, only the {chosen.max_pairs} most similar checked (audit.near_duplicate_max_pairs)")
    prints = fingerprints(inputs, list(dict.fromkeys(ref for pair, _ in candidates.pairs for ref in pair)), notes)
    findings = []
    for (a, b), cosine in candidates.pairs:
        if a not in prints or b not in prints:
            continue
        bits = distance(prints[a], prints[b])
        if bits <= chosen.max_bits:
            findings.append(_finding(inputs, a, b, cosine, bits))
    return sorted(findings, key=lambda f: (f.kind, -f.score, f.paths))


def _split_order(inputs: AuditInputs) -> list[str]:
    """Splits in the order pairs name them: train first (a leak names the train image first), then as given."""
    return sorted(inputs.splits, key=lambda s: (s != "train", list(inputs.splits).index(s)))


@dataclass(frozen=True)
class Candidates:
    """Pairs to look at, most similar first (at most ``max_pairs``), and how many there were before that cap."""

    pairs: list[tuple[tuple[Ref, Ref], float]]
    total: int


def candidate_pairs(inputs: AuditInputs, chosen: Settings) -> Candidates:
    """Pairs whose features are near (among each other's nearest, cosine >= the minimum), byte duplicates left out.

    Gathered in numpy arrays (a million pairs of a large data set take a few MB, not a dict of tuples);
    a pair is named once, its images in split order (train first), then row order.
    """
    order = _split_order(inputs)
    sizes = [len(inputs.splits[split].paths) for split in order]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    first, second, cosine = _near_pairs(inputs, order, offsets, chosen)
    ids = _digest_ids(inputs, order)
    keep = ids[first] != ids[second]
    first, second, cosine = first[keep], second[keep], cosine[keep]
    best = np.lexsort((second, first, -cosine))  # most similar first; the pair found both ways kept once
    first, second, cosine = first[best], second[best], cosine[best]
    _, once = np.unique(first * max(1, int(offsets[-1])) + second, return_index=True)
    once.sort()
    first, second, cosine = first[once], second[once], cosine[once]
    split_of = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1

    def ref(g: int) -> Ref:
        return order[split_of[g]], int(g - offsets[split_of[g]])

    cut = slice(0, chosen.max_pairs)
    pairs = [((ref(a), ref(b)), float(c)) for a, b, c in zip(first[cut].tolist(), second[cut].tolist(), cosine[cut].tolist(), strict=True)]
    return Candidates(pairs=pairs, total=len(first))


def _near_pairs(inputs: AuditInputs, order: list[str], offsets: np.ndarray, chosen: Settings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, cosine) over all images (global positions, first < second): each image's nearest in every split."""
    units = {split: normalised(inputs.splits[split].x) for split in order}
    firsts, seconds, cosines = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for query in order:
        for base in order:
            index, cosine = top_k(units[query], units[base], chosen.neighbours, same=query == base)
            rows, cols = np.nonzero(cosine >= chosen.min_cosine)
            q = offsets[order.index(query)] + rows
            b = offsets[order.index(base)] + index[rows, cols]
            firsts.append(np.minimum(q, b))
            seconds.append(np.maximum(q, b))
            cosines.append(cosine[rows, cols])
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(cosines)


def _digest_ids(inputs: AuditInputs, order: list[str]) -> np.ndarray:
    """One integer per distinct content digest, for every image in split order: equal ids, equal bytes."""
    known: dict[str, int] = {}
    return np.array([known.setdefault(d, len(known)) for split in order for d in inputs.splits[split].digests], dtype=np.int64)


def _finding(inputs: AuditInputs, a: Ref, b: Ref, cosine: float, bits: int) -> Finding:
    data_a, data_b = inputs.splits[a[0]], inputs.splits[b[0]]
    label_a, label_b = (inputs.classes[int(d.y[r])] for d, r in ((data_a, a[1]), (data_b, b[1])))
    detail = f"perceptual hashes {bits}/128 bits apart (best window, mirror included), feature cosine {cosine:.3f}"
    if label_a != label_b:
        detail += f"; labelled {label_a!r} and {label_b!r}"
    return Finding(
        kind="near_duplicate" if a[0] == b[0] else "leak",
        paths=(data_a.paths[a[1]], data_b.paths[b[1]]),
        splits=(a[0], b[0]),
        score=round(1.0 - bits / 128 + cosine / 1000, 6),  # fewer bits first; among equals, the nearer features
        given_label=label_a,
        suggested_label=label_b if label_b != label_a else None,
        detail=detail,
    )


def fingerprints(inputs: AuditInputs, refs: list[Ref], notes: list[str]) -> dict[Ref, Fingerprint]:
    """The fingerprints of ``refs``' files, a few threads at a time (decoding and numpy release the GIL).

    A file that cannot be fingerprinted is left out, with one note each, in the order of ``refs``.
    """
    root = os.path.realpath(inputs.root) if inputs.root is not None else None
    limit = max_file_bytes()
    with _one_blas_thread(), ThreadPoolExecutor(max_workers=_workers()) as pool:
        made = list(pool.map(lambda ref: _fingerprint_file(inputs.splits[ref[0]], ref[1], root, limit), refs))
    done = {}
    in_shards = 0
    for ref, result in zip(refs, made, strict=True):
        if result is _IN_SHARD:
            in_shards += 1  # a whole data set may be in shards: one note, not one per image
        elif isinstance(result, str):
            notes.append(f"near-duplicates: skipped {ref[0]} image {inputs.splits[ref[0]].paths[ref[1]]}: {result}")
        else:
            done[ref] = result
    if in_shards:
        notes.append(f"near-duplicates: {in_shards} candidate images inside shards were not compared by pixels (no file to open)")
    return done


def _workers() -> int:
    """Threads for fingerprinting: the cores this process may use, at most 4 (decoding and numpy release the GIL)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores))


def _one_blas_thread() -> AbstractContextManager[object]:
    """BLAS on one thread while the workers fingerprint: its own threads on top of ours, for products this
    small, made fingerprinting 8x slower on a busy machine. Needs ``threadpoolctl`` (scikit-learn's); without it, as is."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _fingerprint_file(data: SplitData, row: int, root: str | None, limit: int) -> Fingerprint | str:
    """The fingerprint of one image file, or why there is none (a few words): never an exception."""
    from tlkit.extract.decode import BadImage
    from tlkit.util.regular_files import UnsafeFile, read_regular

    file = data.files[row]
    if file is None:
        return _IN_SHARD
    if root is not None and not _inside(file, root):
        return "a link to a file outside the data set's folder, not opened"
    try:
        content = read_regular(file, limit)
    except (OSError, UnsafeFile) as exc:
        return f"cannot be read ({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})"
    if hashlib.sha256(content).hexdigest() != data.digests[row]:
        return "changed since its features were computed (its sha256 differs), not trusted"
    try:
        return fingerprint_bytes(content)
    except BadImage as exc:
        return str(exc)
    except (ValueError, OSError, MemoryError) as exc:
        return f"cannot be fingerprinted ({type(exc).__name__})"


def _inside(file: Path, root: str) -> bool:
    real = os.path.realpath(file)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def max_file_bytes() -> int:
    """The largest image file read: ``$TLKIT_MAX_MEMBER_BYTES`` (the bound on a shard member), default 512 MiB."""
    from tlkit.sources.shards import max_member_bytes

    return max_member_bytes()
