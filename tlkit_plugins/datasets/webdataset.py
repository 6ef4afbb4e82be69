"""``webdataset``: tar shards (the WebDataset format) as a data set, streamed, never unpacked.

``train`` and ``test`` are shard names or brace patterns (``data/train-{000000..000099}.tar``), local
paths, ``file:`` or ``http(s)://`` URLs. A URL whose scheme makes the ``webdataset`` package run a
program (``pipe:`` runs a shell command; ``gs:``, ``hf:``, ``scp:``...) is refused unless the recipe
sets ``allow_pipe: true``: a recipe from someone else runs no command. Each sample
group's image member (``.jpg``, ``.png``, ...) is the image; its class comes from the ``.cls``
member (an index into the class list) or the ``.json`` member's ``class`` (a name) or ``label`` (an
index). The class list is ``classes`` (a JSON file as ``tlkit shards make`` writes, or a text file
with one name per line), else the ``classes.json`` (or 0.1.0's ``classes.txt``) beside local shards,
else the sorted class names found in ``.json``. Members that are not read (absolute or ``..`` names,
links, members above ``TLKIT_MAX_MEMBER_BYTES``, where a cut-short shard ends) are listed as bad
images, so the run reports them and ``images.on_bad_image`` applies.

Loading reads every shard once, front to back, to learn each member's class and the sha256 of its
bytes (the feature cache's key), keeping only those few bytes per image: memory does not grow with
the size or number of shards. Extraction then streams again only the shards holding images the cache
lacks (:mod:`tlkit.extract.shard_members`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import tlkit
from tlkit import SHARD_CLASSES_FILE, ShardGroup, ShardMember, expand_shards, read_shards
from tlkit.errors import DataError, did_you_mean


@dataclass(frozen=True)
class WebDatasetOptions:
    train: str = field(metadata={"help": "training shards: a path, URL or brace pattern such as data/train-{000000..000009}.tar"})
    test: str = field(metadata={"help": "test shards, as train"})
    classes: str | None = field(default=None, metadata={"help": "class-list file: JSON as tlkit shards make writes, or one name per line (default: classes.json or classes.txt beside the shards, else .json class names)"})
    allow_pipe: bool = field(default=False, metadata={"help": "let pipe: URLs (a shell command) and other schemes that run a program (gs:, hf:, scp:...) open shards; only for recipes you wrote"})

    def __post_init__(self) -> None:
        """Refused while the recipe is read, before anything is built: a recipe from someone else runs no command."""
        for key in ("train", "test"):
            _refuse_commands(getattr(self, key), key, self.allow_pipe)


SAFE_SCHEMES = ("", "file", "http", "https")  # opened as files, or fetched without running a command the URL names
OLD_CLASSES_FILE = "classes.txt"  # what tlkit 0.1.0's shards make wrote
MAX_CLASS_LIST_BYTES = 16 * 2**20


def _scheme(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    scheme = urlparse(url).scheme
    return "" if len(scheme) == 1 else scheme.lower()  # a Windows drive letter is a path


def _is_local(url: str) -> bool:
    return _scheme(url) in ("", "file")


def _local(url: str) -> Path:
    return Path(url2pathname(urlparse(url).path)) if _scheme(url) == "file" else Path(url).expanduser()


def _refuse_commands(url: str, key: str, allow_pipe: bool) -> None:
    scheme = _scheme(url)
    if scheme not in SAFE_SCHEMES and not allow_pipe:
        raise DataError(
            f"'dataset.{key}': {url[:60]!r} runs a command ({scheme}: URLs make webdataset start a program); "
            "tlkit runs no command a recipe names unless it sets dataset.allow_pipe: true (only for recipes you wrote)"
        )


def _shards(pattern: str, key: str, allow_pipe: bool) -> list[str]:
    _refuse_commands(pattern, key, allow_pipe)
    urls = expand_shards(pattern)
    if not urls:
        raise DataError(f"'dataset.{key}': the pattern {pattern!r} names no shard")
    for url in urls:
        _refuse_commands(url, key, allow_pipe)  # a brace pattern may name several schemes
        if _is_local(url) and not _local(url).is_file():
            raise DataError(f"shard {url} does not exist; check 'dataset.{key}' (a path or brace pattern such as train-{{000000..000009}}.tar)")
    return [str(_local(u)) if _is_local(u) else u for u in urls]


def _class_list(options: WebDatasetOptions, first_shard: str) -> list[str] | None:
    folder = Path(first_shard).parent
    if options.classes:
        path = Path(options.classes).expanduser()
    elif not _is_local(first_shard):
        return None
    elif (folder / SHARD_CLASSES_FILE).is_file():
        path = folder / SHARD_CLASSES_FILE
    elif (folder / OLD_CLASSES_FILE).is_file():
        path = folder / OLD_CLASSES_FILE
    else:
        return None
    try:
        if not path.is_file() or path.stat().st_size > MAX_CLASS_LIST_BYTES:
            raise DataError(f"class list {path} is not a regular file of at most {MAX_CLASS_LIST_BYTES // 2**20} MiB; set dataset.classes to a classes.json")
        text = path.read_text(encoding="utf-8")
        names = _names(text, path)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the class list {path} ({exc}); set dataset.classes to a classes.json or a text file with one class name per line") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"class list {path} must hold distinct class names (one per line, or a JSON list)")
    return names


def _names(text: str, path: Path) -> list[str]:
    """A ``classes.json`` record (``{"classes": [...]}``), a JSON list, or one name per line."""
    if text.lstrip().startswith(("{", "[")):
        try:
            record = json.loads(text)
        except ValueError:
            raise DataError(f"class list {path} is not valid JSON; write it again with tlkit shards make") from None
        names = record.get("classes") if isinstance(record, dict) else record
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"class list {path} must hold a list of class names under 'classes'")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def _label(member: ShardGroup, classes: list[str] | None) -> int | str:
    """The class index (with a class list) or the class name (without one) of ``member``.

    A member that was not read (``error`` set) may have lost its class with its bytes: it gets the first
    class, never used since it has no features (it is one of the run's bad images).
    """
    if member.error:
        try:
            return _known_label(member, classes)
        except DataError:
            return 0 if classes else ""
    return _known_label(member, classes)


def _known_label(member: ShardGroup, classes: list[str] | None) -> int | str:
    name = member.meta.get("class")
    where = f"{member.shard}: {member.key}"
    if classes is None:
        if isinstance(name, str):
            return name
        raise DataError(f"{where} has no .json 'class' name and no class list is known; set dataset.classes to a file of class names")
    if member.cls is not None or isinstance(member.meta.get("label"), int):
        index = member.cls if member.cls is not None else int(member.meta["label"])
        if not 0 <= index < len(classes):
            raise DataError(f"{where}: class index {index} is outside the {len(classes)} classes of the class list")
        return index
    if isinstance(name, str):
        if name not in classes:
            raise DataError(f"{where}: class '{name}' is not in the class list{did_you_mean(name, classes)}")
        return classes.index(name)
    raise DataError(f"{where} has no .cls member and no .json class; each sample needs one")


def load_webdataset(options: WebDatasetOptions) -> tlkit.LoadedDataset:
    shards = {"train": _shards(options.train, "train", options.allow_pipe), "test": _shards(options.test, "test", options.allow_pipe)}
    classes = _class_list(options, shards["train"][0])
    listed: dict[str, list[tuple[ShardGroup, int | str]]] = {}
    for split, urls in shards.items():
        # Only the small fields survive the loop: a ShardGroup's bytes are dropped once hashed.
        listed[split] = [(_light(m), _label(m, classes)) for m in read_shards(urls)]
        if not listed[split]:
            raise DataError(f"the {split} shards ({urls[0]}{', ...' if len(urls) > 1 else ''}) hold no image members")
    names = classes or sorted({str(label) for split in listed.values() for m, label in split if not m.error})
    splits = {
        split: [
            tlkit.Sample(Path(m.shard) / _shown(m.name), _index(label, names), ShardMember(m.shard, m.name, "" if m.error else m.meta["sha256"]))
            for m, label in rows
        ]
        for split, rows in listed.items()
    }
    notes = tuple(f"{split}: {len(shards[split])} shard{'s' if len(shards[split]) != 1 else ''}, {len(rows)} images" for split, rows in splits.items())
    return tlkit.LoadedDataset(classes=tuple(names), splits=splits, notes=notes)


def _light(member: ShardGroup) -> ShardGroup:
    """The member without its image bytes (their hash kept), so listing holds one image at a time."""
    return ShardGroup(member.shard, member.key, member.name, b"", member.cls, {**member.meta, "sha256": member.sha256}, member.error)


def _index(label: int | str, names: list[str]) -> int:
    if isinstance(label, int):
        return label
    return names.index(label) if label in names else 0


def _shown(name: str) -> str:
    """The member's name as shown under its shard: never absolute, never with '..' (so never the name of a local file)."""
    parts = [part if part != ".." else "%2E%2E" for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
    return "/".join(parts) or "_"


@tlkit.hookimpl
def register_datasets(register: Any) -> None:
    register(
        tlkit.DatasetSpec(
            name="webdataset",
            load=load_webdataset,
            description="WebDataset tar shards (brace patterns, paths or URLs), streamed; classes from .cls/.json or a class list",
            options=WebDatasetOptions,
        )
    )
