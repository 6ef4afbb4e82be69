"""WebDataset tar shards: write them from an image folder, and stream their members back.

A shard is a plain tar file whose members are grouped by key (``000042.jpg``, ``000042.cls``,
``000042.json``): the ``webdataset`` package's format, so the same shards feed any other WebDataset
pipeline. :func:`make_shards` keeps every image's bytes exactly as they were in the folder (no
re-encoding), so a shard member has the same sha256 as its file and both share cached features.

Reading never unpacks a shard: :func:`stream` yields one member group at a time while the tar is read
front to back (local files or URLs, ``train-{000000..000099}.tar`` brace patterns), so memory stays
that of one image however many shards there are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlkit.contract.specs import LoadedDataset, Sample
from tlkit.errors import DataError, OutputError
from tlkit.util.atomic import atomic_path

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm")
CLASSES_FILE = "classes.txt"  # beside the shards tlkit shards make writes; public as tlkit.SHARD_CLASSES_FILE


@dataclass(frozen=True)
class WrittenShards:
    """What :func:`make_shards` wrote: the shards of each split and the class list."""

    out: Path
    splits: dict[str, list[Path]]
    images: dict[str, int]
    classes: tuple[str, ...]

    def pattern(self, split: str) -> str:
        """A brace pattern naming the split's shards, as the ``webdataset`` loader takes it."""
        paths = self.splits[split]
        if len(paths) == 1:
            return str(paths[0])
        return str(self.out / f"{split}-{{{0:06d}..{len(paths) - 1:06d}}}.tar")


def expand(pattern: str) -> list[str]:
    """Shard names from a brace pattern (``a-{000..009}.tar``), each a path or URL.

    Public as ``tlkit.expand_shards``: a change to its signature is a plugin API change (``docs/plugin-api.md``).
    """
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def make_shards(dataset: LoadedDataset, root: Path, out: Path, shard_size: int,
                on_shard: Callable[[Path], None] = lambda path: None) -> WrittenShards:
    """Write each split of ``dataset`` as ``out/<split>-000000.tar``... with ``shard_size`` images each.

    Each image becomes ``<key>.<ext>`` (its bytes unchanged), ``<key>.cls`` (class index) and
    ``<key>.json`` (class name and the path relative to ``root``); ``out/classes.txt`` lists the
    classes. The data set comes from a loader (``imagefolder`` for ``tlkit shards make``), so the
    shards hold exactly the images a folder run would use, in the same order.
    """
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1 (got {shard_size})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in dataset.classes), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write shards in {out} ({exc.strerror or exc}); choose another OUT folder") from None
    written: dict[str, list[Path]] = {}
    for split, samples in dataset.splits.items():
        items = list(samples)
        written[split] = []
        for start in range(0, len(items), shard_size):
            shard = out / f"{split}-{start // shard_size:06d}.tar"
            _write_shard(shard, items[start:start + shard_size], start, root, dataset.classes)
            written[split].append(shard)
            on_shard(shard)
    return WrittenShards(out, written, {split: len(s) for split, s in dataset.splits.items()}, tuple(dataset.classes))


def _write_shard(shard: Path, items: Sequence[Sample], first: int, root: Path, classes: Sequence[str]) -> None:
    """One tar, written to a temporary name and renamed into place (never a half shard under the real name)."""
    import webdataset as wds

    try:
        with atomic_path(shard) as tmp, open(tmp, "wb") as fh, wds.TarWriter(fh, encoder=False, mtime=0) as sink:
            for offset, (path, label, _) in enumerate(items):
                ext = path.suffix.lower().lstrip(".") or "img"
                meta = {"class": classes[label], "label": label, "path": _relative(path, root)}
                sink.write({
                    "__key__": f"{first + offset:06d}",
                    ext: path.read_bytes(),
                    "cls": str(label).encode(),
                    "json": json.dumps(meta).encode(),
                })
    except OSError as exc:
        raise OutputError(f"cannot write {shard} ({exc.strerror or exc})") from None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


@dataclass(frozen=True)
class ShardGroup:
    """One sample group of a shard (the members sharing a key), as :func:`stream` reads it.

    ``name`` and ``data`` are the image member's name and bytes, ``cls`` the ``.cls`` member's class
    index and ``meta`` the ``.json`` member's fields (empty without one). Public as ``tlkit.ShardGroup``.
    """

    shard: str
    key: str
    name: str
    data: bytes
    cls: int | None
    meta: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _image_of(group: dict[str, Any]) -> tuple[str, bytes] | None:
    for ext in IMAGE_EXTENSIONS:
        if isinstance(group.get(ext), bytes):
            return ext, group[ext]
    return None


def _parse(group: dict[str, Any], url: str) -> ShardGroup | None:
    image = _image_of(group)
    if image is None:
        return None
    ext, data = image
    cls: int | None = None
    raw_cls = group.get("cls")
    if isinstance(raw_cls, bytes):
        try:
            cls = int(raw_cls.decode().strip())
        except ValueError:
            raise DataError(f"{url}: member {group['__key__']}.cls is not an integer class index ({raw_cls[:20]!r})") from None
    meta: dict[str, Any] = {}
    if isinstance(group.get("json"), bytes):
        try:
            loaded = json.loads(group["json"])
        except ValueError:
            raise DataError(f"{url}: member {group['__key__']}.json is not valid JSON") from None
        meta = loaded if isinstance(loaded, dict) else {}
    return ShardGroup(url, str(group["__key__"]), f"{group['__key__']}.{ext}", data, cls, meta)


def stream(urls: Sequence[str], *, wanted: Callable[[str, str], bool] | None = None) -> Iterator[ShardGroup]:
    """The image members of ``urls`` in order, read front to back without unpacking anything.

    ``wanted(shard, member name)`` filters before a member is handed on (its bytes are read anyway:
    a tar is sequential). Every shard in ``urls`` is read: callers that split work (ranks, decoding
    workers) pass each part its own shards (see ``tlkit.extract.shard_members``).
    Public as ``tlkit.read_shards``: a change to its signature is a plugin API change (``docs/plugin-api.md``).
    """
    import webdataset as wds

    pipeline = wds.WebDataset(
        list(urls), shardshuffle=False, empty_check=False,
        workersplitter=None, nodesplitter=None,
        handler=_raise,
    )
    for group in pipeline:
        url = str(group.get("__url__", ""))
        member = _parse(group, url)
        if member is not None and (wanted is None or wanted(url, member.name)):
            yield member


def _raise(exc: BaseException) -> bool:
    if isinstance(exc, DataError):
        raise exc
    raise DataError(f"cannot read a shard ({type(exc).__name__}: {str(exc)[:160]}); check the path or URL and that it is a tar file") from None


def make_from_folder(plugins: Any, folder: Path, out: Path, shard_size: int, *, train: str = "train", test: str = "val",
                     on_shard: Callable[[Path], None] = lambda path: None) -> WrittenShards:
    """``tlkit shards make``: the ``imagefolder`` loader's view of ``folder`` (same files, same order) as shards."""
    from tlkit.contract.options import validate_options

    spec = plugins.datasets.get("imagefolder")
    options = validate_options(spec.options, {"root": str(folder), "train": train, "test": test}, "dataset")
    return make_shards(spec.load(options), folder, out, shard_size, on_shard=on_shard)
