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
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tlkit.errors import OutputError
from tlkit.preprocessing import Preprocessing
from tlkit.weights import file_sha256

CACHE_ENV = "TLKIT_CACHE_DIR"
FORMAT = 1
FEATURES_DIR = "features"
HASH_INDEX = "file-hashes.json"
META = "entry.json"
_STALE_TMP_S = 3600.0


def cache_root() -> Path:
    """``$TLKIT_CACHE_DIR``, else the platform's user cache folder for tlkit."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("tlkit", appauthor=False))


def extractor_identity(
    backbone: str,
    weights_id: str,
    preprocessing: Preprocessing,
    precision: str,
    *,
    seed: int,
    options: Any = None,
    background: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that changes a feature vector except the image itself, as plain data.

    Random weights are identified by the seed they were drawn with; real weights by their sha256.
    ``background`` is the colour transparent images are composited on. ``extra`` holds further
    settings that change features (the runtime, its effective precision, the decoder).
    """
    if options is not None and dataclasses.is_dataclass(options) and not isinstance(options, type):
        options = dataclasses.asdict(options)
    return {
        "format": FORMAT,
        "backbone": backbone,
        "backbone_options": options or {},
        "weights": f"random:seed={seed}" if weights_id == "random" else weights_id,
        "preprocessing": preprocessing.to_dict(),
        "precision": precision,
        "background": list(background) if background is not None else None,
        **dict(extra or {}),
    }


def identity_key(identity: Mapping[str, Any]) -> str:
    """A short stable digest of an extractor identity: the entry's folder name."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class FileHashes:
    """sha256 of image files, remembered by (path, size, mtime_ns, ctime_ns) so an unchanged file is never re-read.

    The index is a hint, never trusted beyond those values: any write to a file changes its mtime
    and ctime (ctime even when a tool restores the mtime), and a missing or unreadable index just
    means hashing again.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / HASH_INDEX
        self.entries: dict[str, list[Any]] = {}
        self.changed = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self.entries = data
        except (OSError, ValueError):
            pass

    def sha256(self, path: Path) -> str | None:
        """The file's content hash, or ``None`` when it cannot be read (the decoder will say why)."""
        try:
            resolved = str(path.resolve())
            stat = os.stat(resolved)
        except OSError:
            return None
        known = self.entries.get(resolved)
        if isinstance(known, list) and known[:3] == [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns] and len(known) == 4:
            return str(known[3])
        try:
            digest = file_sha256(Path(resolved))
        except OSError:
            return None
        self.entries[resolved] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write_bytes(self.path, json.dumps(self.entries, separators=(",", ":")).encode())
            except OSError:
                pass  # only a speed-up: next run hashes again
            self.changed = False


class FeatureStore:
    """The features of one extractor (one cache entry), keyed by image sha256."""

    def __init__(self, root: Path, identity: Mapping[str, Any]) -> None:
        self.root = root
        self.identity = dict(identity)
        self.key = identity_key(identity)
        self.path = root / FEATURES_DIR / self.key
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = self.path / META
            if not meta.is_file():
                _atomic_write_bytes(meta, json.dumps({"identity": self.identity, "created": time.time()}, indent=2).encode())
            os.utime(meta)  # "last used", for `tlkit cache clear --older-than`
        except OSError as exc:
            raise OutputError(
                f"cannot write the feature cache in {self.path} ({exc.strerror}); set {CACHE_ENV} to a writable folder "
                "or extract.cache: false"
            ) from None
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

    def lookup(self, hashes: Iterable[str]) -> dict[str, torch.Tensor]:
        """The stored features among ``hashes``; unreadable chunks are skipped (their images are re-extracted)."""
        wanted = set(hashes)
        found: dict[str, torch.Tensor] = {}
        for chunk in self.chunks():
            if not wanted:
                break
            try:
                with safe_open(str(chunk), framework="pt") as fh:
                    for name in wanted.intersection(fh.keys()):
                        found[name] = fh.get_tensor(name)
            except (SafetensorError, OSError, ValueError):
                continue
            wanted.difference_update(found)
        return found

    def write(self, features: Mapping[str, torch.Tensor]) -> Path | None:
        """Store ``{image sha256: feature vector}`` as one chunk, atomically; returns its path."""
        if not features:
            return None
        names = sorted(features)
        chunk = self.path / f"chunk-{hashlib.sha256(''.join(names).encode()).hexdigest()[:32]}.safetensors"
        tmp = self.path / f".tmp-{uuid.uuid4().hex}.safetensors"
        try:
            save_file({n: features[n].detach().float().contiguous().cpu() for n in names}, str(tmp), metadata={"format": str(FORMAT)})
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, chunk)
        except OSError as exc:
            raise OutputError(f"cannot write the feature cache in {self.path} ({exc.strerror}); set {CACHE_ENV} or extract.cache: false") from None
        finally:
            tmp.unlink(missing_ok=True)
        return chunk


def open_store(
    backbone: str,
    weights_id: str,
    preprocessing: Preprocessing,
    precision: str,
    *,
    seed: int,
    options: Any = None,
    background: Sequence[int] | None = None,
    root: Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> FeatureStore:
    """The cache entry for this extractor under ``root`` (default :func:`cache_root`), created if new."""
    identity = extractor_identity(backbone, weights_id, preprocessing, precision, seed=seed, options=options, background=background, extra=extra)
    return FeatureStore(root or cache_root(), identity)


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


def summary(root: Path | None = None) -> dict[str, Any]:
    """Where the cache is and how much it holds (`tlkit cache info`)."""
    root = root or cache_root()
    entries = list_entries(root)
    index = root / HASH_INDEX
    return {
        "path": str(root),
        "env": CACHE_ENV,
        "entries": len(entries),
        "features": sum(e.features for e in entries),
        "bytes": sum(e.bytes for e in entries) + (index.stat().st_size if index.is_file() else 0),
    }


def clear(root: Path | None = None, older_than_s: float | None = None) -> list[EntryInfo]:
    """Remove entries (all, or those unused for ``older_than_s`` seconds); returns what was removed.

    Clearing everything also forgets the file-hash index.
    """
    root = root or cache_root()
    now = time.time()
    removed = []
    for entry in list_entries(root):
        if older_than_s is None or now - entry.last_used > older_than_s:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry)
    if older_than_s is None:
        (root / HASH_INDEX).unlink(missing_ok=True)
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


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def hash_files(paths: Sequence[Path], root: Path | None = None) -> list[str | None]:
    """sha256 of each file (``None`` for unreadable ones), using and updating the index under ``root``."""
    index = FileHashes(root or cache_root())
    hashes = [index.sha256(Path(p)) for p in paths]
    index.save()
    return hashes
