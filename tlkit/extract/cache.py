"""A content-addressed store of feature vectors, so the same image is never pushed through the same backbone twice.

An entry (one folder) holds the features of one *extractor*: the backbone's name and options, the
sha256 of its weights (or ``random`` plus the recipe seed), the resolved preprocessing and the
precision. Inside it, features are keyed by the sha256 of each image file's bytes, so renaming or
moving images costs nothing, editing one re-extracts only that one, and a data set that gains ten
images extracts ten.

Features are written as safetensors *chunks* while extraction proceeds. A chunk is written to a
dot-named temporary file and renamed into place (``os.replace``), so a process killed at any moment
leaves either a complete chunk or an ignored temporary file, never a chunk that reads as complete
but is not; a rerun keeps every finished chunk. Chunk names are derived from their content keys,
so two runs sharing the cache at once at worst rename the same chunk twice: no lock is needed.

The root is ``$TLKIT_CACHE_DIR`` or the user cache folder (``platformdirs``).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from tlkit.contract.preprocessing import Preprocessing
from tlkit.errors import OutputError
from tlkit.util.atomic import write_atomic
from tlkit.util.cache_lock import holders
from tlkit.util.hashing import json_sha256, sha256_of, stamp
from tlkit.util.locations import CACHE_ENV, CATALOG_DIR, FEATURES_DIR, RUNTIMES_DIR, cache_root

if TYPE_CHECKING:
    from tlkit.extract.runtimes.conversion import StoreEntry

FORMAT = 2  # 2: chunks and hash-index files carry checksums
HASH_DIR = "file-hashes"  # one file per writer (see FileHashes)
LEGACY_HASH_INDEX = "file-hashes.json"  # format 1: one file rewritten whole by every process
COMPACT_AT = 8  # merge the per-writer files once this many have piled up
META = "entry.json"
_STALE_TMP_S = 3600.0
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # what writing a read-only cache (a team's shared one) answers


@dataclass(frozen=True)
class CacheIdentity:
    """Everything that changes a feature vector except the image itself: what names a cache entry.

    A run builds it from its prepared backbone and pipeline (:func:`tlkit.run.stages.cache_identity`)
    to open the entry it reads and fills; ``model.json`` records its :meth:`recorded` part as
    ``cache_extra``, and :meth:`with_recorded` puts that back onto what the rest of the run directory
    says, giving the very same identity (``tlkit features`` reads the run's own entry).
    Random weights are identified by the seed they were drawn with, real weights by their sha256;
    ``background`` is the colour transparent images are composited on; ``decoder`` and ``runtime``
    (with its effective ``precision``) are left out of the key when ``None``, as entries written
    before they were recorded had them.
    """

    backbone: str
    weights_id: str
    preprocessing: Preprocessing
    precision: str
    seed: int = 0
    options: Mapping[str, object] = dataclasses.field(default_factory=dict)  # the backbone's options as plain data
    background: tuple[int, ...] | None = None
    decoder: str | None = None
    runtime: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The identity as plain data (saved in the entry's ``entry.json``); its digest is :attr:`key`."""
        return {
            "format": FORMAT,
            "backbone": self.backbone,
            "backbone_options": dict(self.options),
            "weights": f"random:seed={self.seed}" if self.weights_id == "random" else self.weights_id,
            "preprocessing": self.preprocessing.to_dict(),
            "precision": self.precision,
            "background": list(self.background) if self.background is not None else None,
            **self.recorded(),
        }

    @property
    def key(self) -> str:
        """A short stable digest of :meth:`to_dict`: the entry's folder name."""
        return identity_key(self.to_dict())

    def recorded(self) -> dict[str, str]:
        """The part the run's other records do not hold (``model.json``'s ``cache_extra``): the decoder and the runtime."""
        extra = {} if self.decoder is None else {"decoder": self.decoder}
        return extra if self.runtime is None else {**extra, "runtime": self.runtime, "precision": self.precision}

    def with_recorded(self, extra: Mapping[str, object] | None) -> CacheIdentity:
        """This identity completed by a :meth:`recorded` mapping read back (``None`` or ``{}``: a run that recorded none)."""
        extra = extra or {}
        decoder, runtime = extra.get("decoder"), extra.get("runtime")
        return dataclasses.replace(
            self,
            decoder=None if decoder is None else str(decoder),
            runtime=None if runtime is None else str(runtime),
            precision=str(extra.get("precision", self.precision)),
        )


def identity_key(identity: Mapping[str, Any]) -> str:
    """A short stable digest of an extractor identity (:meth:`CacheIdentity.to_dict`): the entry's folder name."""
    return json_sha256(identity)[:32]


def _space_hint(exc: OSError) -> str:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return "free some disk space" if full else "check the folder's permissions"


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _valid_hash_entry(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value[:3])
        and isinstance(value[3], str)
        and _HEX64.fullmatch(value[3]) is not None
    )


class FileHashes:
    """sha256 of image files, remembered by (path, size, mtime_ns, ctime_ns) so an unchanged file is never re-read.

    The index is a hint, never trusted beyond those values: any write to a file changes its mtime
    and ctime (ctime even when a tool restores the mtime), and a missing or unreadable index just
    means hashing again.

    It is kept *per writer*: each process that hashed something new adds its own file under
    ``file-hashes/`` (written once, atomically, with a checksum of its entries), and readers merge
    them all. Concurrent processes (torchrun ranks, machines sharing the cache) therefore never
    overwrite each other's work. When many files have piled up, a writer merges every file it read
    into its own and only then deletes those it merged, so nothing another writer added is lost.
    A file whose checksum does not match (damaged) is dropped and named in :attr:`damaged`.
    """

    def __init__(self, root: Path) -> None:
        self.dir = root / HASH_DIR
        self.entries: dict[str, list[Any]] = {}
        self.new: dict[str, list[Any]] = {}
        self.read_files: list[Path] = []
        self.damaged: list[tuple[Path, str]] = []
        for path in self._journals():
            self._read(path)

    @property
    def changed(self) -> bool:
        return bool(self.new)

    def _journals(self) -> list[Path]:
        try:
            files = [p for p in self.dir.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
        except OSError:
            return []

        def mtime(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        return sorted(files, key=mtime)  # newer files win where two disagree

    def _read(self, path: Path) -> None:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return  # merged and removed by another writer meanwhile
        except (OSError, ValueError) as exc:
            self._drop(path, f"unreadable ({type(exc).__name__})")
            return
        entries = data.get("entries") if isinstance(data, dict) else None
        if not isinstance(entries, dict) or data.get("sha256") != json_sha256(entries):
            self._drop(path, "checksum mismatch")
            return
        self.read_files.append(path)
        self.entries.update((k, v) for k, v in entries.items() if _valid_hash_entry(v))

    def _drop(self, path: Path, reason: str) -> None:
        self.damaged.append((path, reason))
        try:
            path.unlink()
        except OSError:
            pass  # a read-only cache: ignoring it is enough

    def sha256(self, path: Path) -> str | None:
        """The file's content hash, or ``None`` when it cannot be read (the decoder will say why)."""
        try:
            file_stamp = stamp(path)
        except OSError:
            return None
        resolved, size, mtime_ns, ctime_ns = file_stamp
        known = self.entries.get(resolved)
        if known is not None and known[:3] == [size, mtime_ns, ctime_ns]:
            return str(known[3])
        try:
            digest = sha256_of(resolved, file_stamp)
        except OSError:
            return None
        self.entries[resolved] = self.new[resolved] = [size, mtime_ns, ctime_ns, digest]
        return digest

    def save(self) -> None:
        """Add this writer's new entries as one file (merging the others in when there are many)."""
        if not self.new:
            return
        compact = len(self.read_files) >= COMPACT_AT
        entries = self.entries if compact else self.new
        body = {"format": FORMAT, "sha256": json_sha256(entries), "entries": entries}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.dir / f"w-{uuid.uuid4().hex}.json", json.dumps(body, separators=(",", ":")).encode())
        except OSError:
            return  # only a speed-up: next run hashes again
        self.new = {}
        if compact:
            for merged in self.read_files:
                merged.unlink(missing_ok=True)
            self.read_files = []


class DamagedChunk(Exception):
    """A cache chunk that does not hold what its checksum says (internal: the chunk is dropped)."""


def chunk_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and float32 bytes of a chunk's tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + b"\0")
        digest.update(tensors[name].detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class FeatureStore:
    """The features of one extractor (one cache entry), keyed by image sha256.

    Every chunk carries the feature dimension and a sha256 of its tensors in its metadata, checked
    when it is read: a chunk that fails (flipped bits, cut short, vectors of another length, NaN) is
    dropped (deleted where the cache is writable) and its images are extracted again; :meth:`notes`
    says so once. A cache that cannot be written (read-only, e.g. a shared team cache) is still
    used for reading; new features are then simply not saved.
    """

    def __init__(self, root: Path, identity: CacheIdentity, *, feature_dim: int | None = None) -> None:
        self.root = root
        self.identity = identity
        self.key = identity.key
        self.path = root / FEATURES_DIR / self.key
        self.feature_dim = feature_dim
        self.read_only = False
        self.damaged: list[tuple[Path, str]] = []
        self.index_notes: list[str] = []  # damage found in the file-hash index (filled by hash_files)
        self.unsaved = 0
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = self.path / META
            if not meta.is_file():
                write_atomic(meta, json.dumps({"identity": identity.to_dict(), "created": time.time()}, indent=2).encode())
            os.utime(meta)  # "last used", for `tlkit cache clear --older-than`
        except OSError as exc:
            if exc.errno in _READ_ONLY and not os.path.lexists(self.path) and root.is_dir():
                self.read_only = True  # a read-only cache without this entry: nothing to read, nothing saved (noted)
                return
            if not (self.path / META).is_file() or not os.access(self.path, os.R_OK | os.X_OK):
                raise OutputError(
                    f"cannot write the feature cache in {self.path} ({exc.strerror}); set {CACHE_ENV} to a writable folder "
                    "or extract.cache: false"
                ) from None
            self.read_only = True  # an existing entry we may read but not write
        if not self.read_only:
            self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        now = time.time()
        for tmp in self.path.glob(".tmp-*"):
            try:
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass

    def chunks(self) -> list[Path]:
        return sorted(self.path.glob("chunk-*.safetensors"))

    def _headers(self) -> list[tuple[Path, int, set[str]]]:
        """(chunk, dim, keys) of every chunk whose header reads; chunks that do not are dropped."""
        headers = []
        for chunk in self.chunks():
            try:
                with safe_open(str(chunk), framework="pt") as fh:
                    meta = fh.metadata() or {}
                    keys = set(fh.keys())
                if meta.get("format") != str(FORMAT) or not _HEX64.fullmatch(meta.get("sha256", "")):
                    raise DamagedChunk("no valid checksum in its header")
                headers.append((chunk, int(meta["dim"]), keys))
            except FileNotFoundError:
                continue  # dropped by another process meanwhile
            except (SafetensorError, DamagedChunk, OSError, ValueError, KeyError) as exc:
                if isinstance(exc, PermissionError):
                    continue  # not damaged, only not ours to read
                self._drop(chunk, str(exc) if isinstance(exc, DamagedChunk) else f"unreadable header ({type(exc).__name__})")
        return headers

    def _expected_dim(self, headers: list[tuple[Path, int, set[str]]]) -> int | None:
        """The backbone's feature dimension when known, else the one most stored features have."""
        if self.feature_dim is not None:
            return self.feature_dim
        votes: dict[int, int] = {}
        for _, dim, keys in headers:
            votes[dim] = votes.get(dim, 0) + len(keys)
        return max(votes, key=lambda d: votes[d]) if votes else None

    def _read_chunk(self, chunk: Path, dim: int) -> dict[str, torch.Tensor]:
        """All tensors of a chunk, verified against its checksum; raises :class:`DamagedChunk`."""
        try:
            with safe_open(str(chunk), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        except (SafetensorError, ValueError) as exc:
            raise DamagedChunk(f"unreadable ({type(exc).__name__})") from None
        if meta.get("dim") != str(dim) or any(t.shape != (dim,) or t.dtype != torch.float32 for t in tensors.values()):
            raise DamagedChunk(f"vectors of another length than the {dim} of this extractor")
        if chunk_checksum(tensors) != meta.get("sha256"):
            raise DamagedChunk("checksum mismatch")
        if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
            raise DamagedChunk("non-finite values")
        return tensors

    def _drop(self, chunk: Path, reason: str) -> None:
        self.damaged.append((chunk, reason))
        if not self.read_only:
            try:
                chunk.unlink()
            except OSError:
                pass

    def lookup(self, hashes: Iterable[str]) -> dict[str, torch.Tensor]:
        """The stored, verified features among ``hashes``; damaged chunks are dropped (their images are re-extracted)."""
        wanted = set(hashes)
        found: dict[str, torch.Tensor] = {}
        headers = self._headers()
        dim = self._expected_dim(headers)
        for chunk, chunk_dim, keys in headers:
            if not wanted:
                break
            if not wanted & keys:
                continue
            if chunk_dim != dim:
                self._drop(chunk, f"vectors of length {chunk_dim}, not the {dim} of this extractor")
                continue
            try:
                tensors = self._read_chunk(chunk, chunk_dim)
            except DamagedChunk as exc:
                self._drop(chunk, str(exc))
                continue
            except OSError:
                continue
            for name in wanted & tensors.keys():
                found[name] = tensors[name]
            wanted.difference_update(found)
        return found

    def notes(self) -> list[str]:
        """A line each about damage found (chunks, hash index) and features not saved; empty when all was well."""
        lines = list(dict.fromkeys(self.index_notes))
        if self.damaged:
            first, reason = self.damaged[0]
            more = f" and {len(self.damaged) - 1} more" if len(self.damaged) > 1 else ""
            lines.append(
                f"feature cache: dropped damaged chunk {first.name} ({reason}){more} in {self.path}; its images were extracted again"
            )
        if self.unsaved:
            lines.append(f"feature cache {self.path} is read-only: {self.unsaved} new features were not saved")
        return lines

    def write(self, features: Mapping[str, torch.Tensor]) -> Path | None:
        """Store ``{image sha256: feature vector}`` as one chunk, atomically; returns its path.

        A full disk is an :class:`OutputError` naming the cache folder; every chunk written before
        stays, so a rerun after freeing space resumes from them.
        """
        if not features:
            return None
        if self.read_only:
            self.unsaved += len(features)
            return None
        names = sorted(features)
        tensors = {n: features[n].detach().float().contiguous().cpu() for n in names}
        dims = {tuple(t.shape) for t in tensors.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise ValueError(f"a cache chunk holds vectors of one length, not {sorted(dims)}")
        meta = {"format": str(FORMAT), "dim": str(next(iter(dims))[0]), "sha256": chunk_checksum(tensors)}
        chunk = self.path / f"chunk-{hashlib.sha256(''.join(names).encode()).hexdigest()[:32]}.safetensors"
        try:
            # Serialised in memory and written by Python: a full disk is an OSError like every other write.
            write_atomic(chunk, save(tensors, metadata=meta))
        except OSError as exc:
            raise OutputError(
                f"cannot write the feature cache in {self.path} ({exc.strerror or exc}); {_space_hint(exc)}, "
                f"set {CACHE_ENV} elsewhere or extract.cache: false (the chunks written so far are kept)"
            ) from None
        return chunk


def open_store(identity: CacheIdentity, *, root: Path | None = None, feature_dim: int | None = None) -> FeatureStore:
    """The cache entry for this extractor under ``root`` (default :func:`cache_root`), created if new.

    ``feature_dim`` (the backbone's, when known) lets the store refuse vectors of another length.
    """
    return FeatureStore(root or cache_root(), identity, feature_dim=feature_dim)


# --- inspecting and clearing (the `tlkit cache` commands) ---


@dataclass(frozen=True)
class EntryInfo:
    """One cache entry as `tlkit cache list` shows it."""

    key: str
    backbone: str
    weights: str
    precision: str
    features: int
    chunks: int
    bytes: int
    last_used: float
    path: Path
    kind: str = "features"  # or "converted model" (what `tlkit cache clear` removed)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data


def _entry_info(folder: Path) -> EntryInfo:
    identity: dict[str, Any] = {}
    last_used = folder.stat().st_mtime
    try:
        meta = folder / META
        identity = json.loads(meta.read_text()).get("identity", {})
        last_used = meta.stat().st_mtime
    except (OSError, ValueError, AttributeError):
        pass
    count = 0
    size = 0
    chunks = sorted(folder.glob("chunk-*.safetensors"))
    for chunk in chunks:
        try:
            size += chunk.stat().st_size
            with safe_open(str(chunk), framework="pt") as fh:
                count += len(list(fh.keys()))
        except (SafetensorError, OSError, ValueError):
            continue
    return EntryInfo(
        key=folder.name,
        backbone=str(identity.get("backbone", "?")),
        weights=str(identity.get("weights", "?")),
        precision=str(identity.get("precision", "?")),
        features=count,
        chunks=len(chunks),
        bytes=size,
        last_used=last_used,
        path=folder,
    )


def list_entries(root: Path | None = None) -> list[EntryInfo]:
    """Every cache entry, most recently used first."""
    base = (root or cache_root()) / FEATURES_DIR
    if not base.is_dir():
        return []
    entries = [_entry_info(folder) for folder in base.iterdir() if folder.is_dir()]
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def _model_entry(entry: StoreEntry) -> EntryInfo:
    identity = entry.identity
    return EntryInfo(
        key=entry.folder.name, backbone=str(identity.get("backbone", "?")), weights=str(identity.get("weights_sha256", "?")),
        precision=str(identity.get("precision", "?")), features=0, chunks=0, bytes=entry.bytes, last_used=entry.last_used,
        path=entry.folder, kind="converted model",
    )


def _files_bytes(folder: Path) -> int:
    try:
        return sum(os.lstat(p).st_size for p in folder.iterdir())
    except OSError:
        return 0


def summary(root: Path | None = None) -> dict[str, Any]:
    """Where the cache is and how much each of its stores holds (`tlkit cache info`): features, converted models, indexes."""
    from tlkit.extract.runtimes.conversion import ModelStore  # the runtimes package imports this module

    root = root or cache_root()
    entries = list_entries(root)
    models = ModelStore(root).entries()
    legacy = root / LEGACY_HASH_INDEX
    index_bytes = _files_bytes(root / HASH_DIR) + (legacy.stat().st_size if legacy.is_file() else 0)
    listing_bytes = _files_bytes(root / CATALOG_DIR)
    feature_bytes, model_bytes = sum(e.bytes for e in entries), sum(m.bytes for m in models)
    return {
        "path": str(root),
        "env": CACHE_ENV,
        "entries": len(entries),
        "features": sum(e.features for e in entries),
        "bytes": feature_bytes + model_bytes + index_bytes + listing_bytes,
        "stores": {
            "features": {"path": str(root / FEATURES_DIR), "entries": len(entries), "bytes": feature_bytes + index_bytes},
            "converted_models": {"path": str(root / RUNTIMES_DIR), "entries": sum(not m.leftover for m in models), "bytes": model_bytes},
            "listing_index": {"path": str(root / CATALOG_DIR), "bytes": listing_bytes},
        },
        "in_use_by": holders(root, remove_stale=False),
    }


def clear(root: Path | None = None, older_than_s: float | None = None) -> list[EntryInfo]:
    """Remove entries of every store (all, or those unused for ``older_than_s`` seconds); returns what was removed.

    Feature entries and converted models go by their last use; clearing everything also forgets the
    file-hash index, the listing index, the kept plots and the warm-rerun memos (all rebuilt when next needed). Refused with an
    :class:`~tlkit.errors.OutputError` while a run holds the cache (:mod:`tlkit.util.cache_lock`).
    """
    from tlkit.extract.runtimes.conversion import ModelStore  # the runtimes package imports this module

    root = root or cache_root()
    busy = holders(root)
    if busy:
        pids = ", ".join(str(pid) for pid in busy)
        raise OutputError(f"the cache in {root} is in use by a run (pid {pids}): clear it once the run has ended")
    now = time.time()
    removed = []
    for entry in list_entries(root):
        if older_than_s is None or now - entry.last_used > older_than_s:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry)
    store = ModelStore(root)
    for model in store.entries():
        if older_than_s is None or now - model.last_used > older_than_s:
            store.discard(model)
            if not model.leftover:
                removed.append(_model_entry(model))
    if older_than_s is None:
        (root / LEGACY_HASH_INDEX).unlink(missing_ok=True)
        shutil.rmtree(root / HASH_DIR, ignore_errors=True)
        shutil.rmtree(root / CATALOG_DIR, ignore_errors=True)
        for derived in ("plots", "warm", "audit"):  # kept plots, warm-rerun and audit memos (plot_cache, run.warm, audit.memo): redrawn, remembered again
            shutil.rmtree(root / derived, ignore_errors=True)
    return removed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"1d12h"``, ``"90m"``, ``"45s"``, ``"2w"`` -> seconds; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact:
        raise ValueError(f"'{text}' is not a duration; use e.g. 30d, 12h, 90m, 45s or 1d12h")
    return sum(float(n) * _UNITS[u] for n, u in parts)




def hash_files(paths: Sequence[Path], root: Path | None = None, *, notes: list[str] | None = None) -> list[str | None]:
    """sha256 of each file (``None`` for unreadable ones), using and adding to the index under ``root``.

    Only ``paths`` are hashed (a rank hashes its own shard). A damaged index file is dropped and,
    when ``notes`` is given, named there in one line.
    """
    index = FileHashes(root or cache_root())
    hashes = [index.sha256(Path(p)) for p in paths]
    index.save()
    if index.damaged and notes is not None:
        path, reason = index.damaged[0]
        more = f" and {len(index.damaged) - 1} more" if len(index.damaged) > 1 else ""
        notes.append(f"feature cache: dropped damaged file-hash index {path} ({reason}){more}; those files were hashed again")
    return hashes
