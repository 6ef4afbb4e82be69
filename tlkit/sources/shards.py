"""WebDataset tar shards: write them from an image folder, and stream their members back.

A shard is a plain tar file whose members are grouped by key (``000042.jpg``, ``000042.cls``,
``000042.json``): the ``webdataset`` package's format, so the same shards feed any other WebDataset
pipeline. :func:`make_shards` keeps every image's bytes exactly as they were in the folder (no
re-encoding), so a shard member has the same sha256 as its file and both share cached features.

Reading never unpacks a shard: :func:`stream` yields one member group at a time while the tar is read
front to back (local files or URLs, ``train-{000000..000099}.tar`` brace patterns), so memory stays
that of one image however many shards there are. A shard is untrusted: a member is read only after its
header passed (a relative name without ``..``, a regular file, at most ``TLKIT_MAX_MEMBER_BYTES``); any
other member, and the place where a cut-short shard ends, comes back as a group with ``error`` set.
Which URL schemes may be opened (``pipe:`` runs a command) is the loader's decision (``webdataset``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from tarfile import EmptyHeaderError, TruncatedHeaderError  # type: ignore[attr-defined]
from typing import IO, Any, cast
from urllib.parse import urlparse
from urllib.request import url2pathname

from tlkit.contract.specs import LoadedDataset, Sample
from tlkit.errors import DataError, OutputError
from tlkit.util.atomic import atomic_path

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm")
CLASSES_FILE = "classes.json"  # beside the shards tlkit shards make writes; public as tlkit.SHARD_CLASSES_FILE
OLD_CLASSES_FILE = "classes.txt"  # what 0.1.0 wrote (one name a line): still read, never written
MEMBER_BYTES_ENV = "TLKIT_MAX_MEMBER_BYTES"
DEFAULT_MAX_MEMBER_BYTES = 512 * 2**20
MAX_LABEL_BYTES = 2**20  # a .cls or .json member
MAX_SHARDS = 100_000  # names one brace pattern may expand to


@dataclass(frozen=True)
class WrittenShards:
    """What :func:`make_shards` wrote: the shards of each split and the class list (and the links it left out)."""

    out: Path
    splits: dict[str, list[Path]]
    images: dict[str, int]
    classes: tuple[str, ...]
    skipped: tuple[Path, ...] = ()  # links to files outside the folder: never packed

    def pattern(self, split: str) -> str:
        """A brace pattern naming the split's shards, as the ``webdataset`` loader takes it."""
        paths = self.splits[split]
        if len(paths) == 1:
            return str(paths[0])
        return str(self.out / f"{split}-{{{0:06d}..{len(paths) - 1:06d}}}.tar")


def expand(pattern: str, limit: int = MAX_SHARDS) -> list[str]:
    """Shard names from a brace pattern (``a-{000..009}.tar``), each a path or URL; more than ``limit`` is an error.

    Public as ``tlkit.expand_shards``: a change to its signature is a plugin API change (``docs/plugin-api.md``).
    """
    import braceexpand

    too_many = DataError(f"the shard pattern {pattern!r} names more than {limit} shards; give a smaller range")
    if _range_count(pattern) > limit:  # before expanding: braceexpand builds each range whole
        raise too_many
    names = list(itertools.islice(braceexpand.braceexpand(pattern), limit + 1))
    if len(names) > limit:
        raise too_many
    return names


def _range_count(pattern: str) -> int:
    """How many names the pattern's ``{a..b}`` ranges multiply to (braceexpand builds each range whole: count first)."""
    count = 1
    for first, last, step in re.findall(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}", pattern):
        count *= abs(int(last) - int(first)) // max(1, abs(int(step or 1))) + 1
        if count > 2**62:
            break
    return count


def make_shards(dataset: LoadedDataset, root: Path, out: Path, shard_size: int,
                on_shard: Callable[[Path], None] = lambda path: None) -> WrittenShards:
    """Write each split of ``dataset`` as ``out/<split>-000000.tar``... with ``shard_size`` images each.

    Each image becomes ``<key>.<ext>`` (its bytes unchanged), ``<key>.cls`` (class index) and
    ``<key>.json`` (class name and the path relative to ``root``); ``out/classes.json`` lists the
    classes and the shards written. The data set comes from a loader (``imagefolder`` for ``tlkit shards make``),
    so the shards hold exactly the images a folder run would use, in the same order, except links to
    files outside ``root`` (never packed: listed in ``skipped``). Shards an earlier ``make_shards`` wrote
    into ``out`` (named in its ``classes.json``) and not written again are removed; no other file is touched.
    """
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1 (got {shard_size})")
    earlier = _earlier_shards(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write shards in {out} ({exc.strerror or exc}); choose another OUT folder") from None
    inside = os.path.realpath(root)
    skipped = tuple(s.path for samples in dataset.splits.values() for s in samples if not _within(s.path, inside))
    written: dict[str, list[Path]] = {}
    counts: dict[str, int] = {}
    for split, samples in dataset.splits.items():
        items = [s for s in samples if _within(s.path, inside)]
        counts[split], written[split] = len(items), []
        for start in range(0, len(items), shard_size):
            shard = out / f"{split}-{start // shard_size:06d}.tar"
            _write_shard(shard, items[start:start + shard_size], start, root, dataset.classes)
            written[split].append(shard)
            on_shard(shard)
    _write_classes(out, dataset.classes, written)
    keep = {p.name for paths in written.values() for p in paths}
    for name in earlier - keep:
        (out / name).unlink(missing_ok=True)
    return WrittenShards(out, written, counts, tuple(dataset.classes), skipped)


def _within(path: Path, real_root: str) -> bool:
    """``path`` (through its links) is inside ``real_root``: a link out of the folder is not packed."""
    return os.path.realpath(path).startswith(real_root.rstrip(os.sep) + os.sep)


def _write_classes(out: Path, classes: Sequence[str], written: dict[str, list[Path]]) -> None:
    record = {"format": 1, "classes": list(classes), "shards": {split: [p.name for p in paths] for split, paths in written.items()}}
    try:
        with atomic_path(out / CLASSES_FILE) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write {out / CLASSES_FILE} ({exc.strerror or exc}); choose another OUT folder") from None


def _earlier_shards(out: Path) -> set[str]:
    """The shard names an earlier run wrote in ``out`` (from its ``classes.json``): plain ``<split>-NNNNNN.tar`` names only."""
    try:
        record = json.loads((out / CLASSES_FILE).read_text(encoding="utf-8"))
        listed = record["shards"].values()
        return {n for names in listed for n in names if isinstance(n, str) and re.fullmatch(r"[\w.-]+-\d{6}\.tar", n) and not n.startswith(".")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


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
    ``error`` is set (and ``data`` empty) for a member that was not read: an absolute or ``..`` name,
    a link, a member above ``TLKIT_MAX_MEMBER_BYTES``, or the place where a cut-short shard ends.
    """

    shard: str
    key: str
    name: str
    data: bytes
    cls: int | None
    meta: dict[str, Any]
    error: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def max_member_bytes() -> int:
    """The largest shard member read (``TLKIT_MAX_MEMBER_BYTES``, default 512 MiB): its size is checked in its header first."""
    from tlkit.util.units import positive_number

    try:
        return int(min(positive_number(MEMBER_BYTES_ENV, DEFAULT_MAX_MEMBER_BYTES), 2**62))
    except ValueError as exc:
        raise DataError(str(exc)) from None


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
    if group.get("__error__"):  # not read: its .cls and .json may be as hostile or cut as its image
        return ShardGroup(url, str(group["__key__"]), f"{group['__key__']}.{ext}", b"", None, {}, str(group["__error__"]))
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
    workers) pass each part its own shards (see ``tlkit.extract.shard_members``). Members are grouped by
    key as the ``webdataset`` package groups them. A member that is not read (see :class:`ShardGroup`)
    comes with its ``error`` set, so callers report it with the other bad images.
    Public as ``tlkit.read_shards``: a change to its signature is a plugin API change (``docs/plugin-api.md``).
    """
    limit = max_member_bytes()
    for url in urls:
        for group in _groups(url, limit):
            member = _parse(group, url)
            if member is not None and (wanted is None or wanted(url, member.name)):
                yield member


def _open(url: str) -> IO[bytes]:
    """A local path or ``file:`` URL is opened as a file; anything else through the ``webdataset`` package."""
    if url.startswith("file:"):
        url = url2pathname(urlparse(url).path)
    if "://" not in url and not url.startswith("pipe:"):
        return open(url, "rb")
    from webdataset.gopen import gopen

    return cast(IO[bytes], gopen(url, "rb"))


class _Header(tarfile.TarInfo):
    """A tar header that records why the archive ended: a zero block is its proper end, anything short is a cut."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _Header:
        try:
            return super().fromtarfile(tar)
        except (EmptyHeaderError, TruncatedHeaderError):
            setattr(tar, "tlkit_cut", True)  # noqa: B010 - read back in _groups
            raise


def _bad_name(info: tarfile.TarInfo) -> str:
    name = info.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[/\\]", name):
        return "an absolute member name (never read from this computer)"
    if ".." in re.split(r"[/\\]", name):
        return "a member name with '..' (never read from outside its shard)"
    if info.islnk() or info.issym():
        return "a link member (never followed)"
    return ""


def _groups(url: str, limit: int) -> Iterator[dict[str, Any]]:
    """Member groups of one shard as the ``webdataset`` package groups them (``__key__`` and one entry per suffix)."""
    current: dict[str, Any] | None = None
    try:
        with _open(url) as fh, tarfile.open(fileobj=fh, mode="r|*", tarinfo=_Header) as tar:
            info: tarfile.TarInfo | None = None
            for info in tar:
                if not (info.isfile() or info.islnk() or info.issym()):
                    continue
                key, suffix = _split_name(info.name)
                if key is None or suffix not in (*IMAGE_EXTENSIONS, "cls", "json"):
                    continue  # members tlkit does not use are never read
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                current = current or {"__key__": key}
                current[suffix] = _read(tar, info, limit if suffix in IMAGE_EXTENSIONS else min(limit, MAX_LABEL_BYTES), current)
            if getattr(tar, "tlkit_cut", None) is not None and info is not None:
                last = _split_name(info.name)[0] or info.name
                yield _cut(current if current is not None and current["__key__"] == last else {"__key__": last}, info.name)
                return
    except _CutShort as cut:
        yield _cut(current or {"__key__": cut.name}, cut.name)
        return
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        raise DataError(f"cannot read shard {url} ({type(exc).__name__}: {str(exc)[:160]}); check the path or URL and that it is a tar file") from None
    if current is not None:
        yield current


class _CutShort(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _cut(group: dict[str, Any], member: str) -> dict[str, Any]:
    image = _image_of(group)
    ext = image[0] if image is not None else "jpg"
    return {**group, ext: b"", "__error__": f"the shard is cut short inside or after member '{member}' (truncated or still being written); write or fetch it again"}


def _read(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int, group: dict[str, Any]) -> bytes:
    """The member's bytes, or ``b""`` with the group's ``__error__`` set when its name, type or size is refused (nothing read)."""
    reason = _bad_name(info) or (f"{info.size} bytes, above the limit of {limit} ({MEMBER_BYTES_ENV} for images); not read" if info.size > limit else "")
    if reason:
        group["__error__"] = f"member '{info.name}': {reason}"
        return b""
    stored = tar.extractfile(info)
    try:
        data = stored.read() if stored is not None else b""
    except (tarfile.ReadError, EOFError):
        raise _CutShort(info.name) from None
    if len(data) != info.size:
        raise _CutShort(info.name)
    return data


def _split_name(name: str) -> tuple[str | None, str]:
    """``webdataset``'s key and suffix: ``dir/000042.seg.png`` -> (``dir/000042``, ``seg.png``), the suffix lower-cased."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    if not match:
        return None, ""
    return match.group(1), match.group(2).lower()


def make_from_folder(plugins: Any, folder: Path, out: Path, shard_size: int, *, train: str = "train", test: str = "val",
                     on_shard: Callable[[Path], None] = lambda path: None) -> WrittenShards:
    """``tlkit shards make``: the ``imagefolder`` loader's view of ``folder`` (same files, same order) as shards."""
    from tlkit.contract.options import validate_options

    spec = plugins.datasets.get("imagefolder")
    options = validate_options(spec.options, {"root": str(folder), "train": train, "test": test}, "dataset")
    return make_shards(spec.load(options), folder, out, shard_size, on_shard=on_shard)
