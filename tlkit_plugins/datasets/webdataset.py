"""``webdataset``: tar shards (the WebDataset format) as a data set, streamed, never unpacked.

``train`` and ``test`` are shard names or brace patterns (``data/train-{000000..000099}.tar``), local
paths or URLs (anything the ``webdataset`` package opens: ``https://``, ``pipe:``...). Each sample
group's image member (``.jpg``, ``.png``, ...) is the image; its class comes from the ``.cls``
member (an index into the class list) or the ``.json`` member's ``class`` (a name) or ``label`` (an
index). The class list is ``classes`` (a file, one name per line), else the ``classes.txt`` that
``tlkit shards make`` writes beside local shards, else the sorted class names found in ``.json``.

Loading reads every shard once, front to back, to learn each member's class and the sha256 of its
bytes (the feature cache's key), keeping only those few bytes per image: memory does not grow with
the size or number of shards. Extraction then streams again only the shards holding images the cache
lacks (:mod:`tlkit.extract.shard_members`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tlkit
from tlkit import SHARD_CLASSES_FILE, ShardGroup, ShardMember, expand_shards, read_shards
from tlkit.errors import DataError, did_you_mean


@dataclass(frozen=True)
class WebDatasetOptions:
    train: str = field(metadata={"help": "training shards: a path, URL or brace pattern such as data/train-{000000..000009}.tar"})
    test: str = field(metadata={"help": "test shards, as train"})
    classes: str | None = field(default=None, metadata={"help": "class-list file, one name per line (default: classes.txt beside the shards, else .json class names)"})


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _shards(pattern: str, key: str) -> list[str]:
    urls = expand_shards(pattern)
    if not urls:
        raise DataError(f"'dataset.{key}': the pattern {pattern!r} names no shard")
    for url in urls:
        if _is_local(url) and not Path(url).expanduser().is_file():
            raise DataError(f"shard {url} does not exist; check 'dataset.{key}' (a path or brace pattern such as train-{{000000..000009}}.tar)")
    return [str(Path(u).expanduser()) if _is_local(u) else u for u in urls]


def _class_list(options: WebDatasetOptions, first_shard: str) -> list[str] | None:
    if options.classes:
        path = Path(options.classes).expanduser()
    elif _is_local(first_shard) and (Path(first_shard).parent / SHARD_CLASSES_FILE).is_file():
        path = Path(first_shard).parent / SHARD_CLASSES_FILE
    else:
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the class list {path} ({exc}); set dataset.classes to a text file with one class name per line") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"class list {path} must hold one distinct class name per line")
    return names


def _label(member: ShardGroup, classes: list[str] | None) -> int | str:
    """The class index (with a class list) or the class name (without one) of ``member``."""
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
    shards = {"train": _shards(options.train, "train"), "test": _shards(options.test, "test")}
    classes = _class_list(options, shards["train"][0])
    listed: dict[str, list[tuple[ShardGroup, int | str]]] = {}
    for split, urls in shards.items():
        # Only the small fields survive the loop: a ShardGroup's bytes are dropped once hashed.
        listed[split] = [(_light(m), _label(m, classes)) for m in read_shards(urls)]
        if not listed[split]:
            raise DataError(f"the {split} shards ({urls[0]}{', ...' if len(urls) > 1 else ''}) hold no image members")
    names = classes or sorted({str(label) for split in listed.values() for _, label in split})
    splits = {
        split: [
            tlkit.Sample(Path(m.shard) / m.name, label if isinstance(label, int) else names.index(label), ShardMember(m.shard, m.name, m.meta["sha256"]))
            for m, label in rows
        ]
        for split, rows in listed.items()
    }
    notes = tuple(f"{split}: {len(shards[split])} shard{'s' if len(shards[split]) != 1 else ''}, {len(rows)} images" for split, rows in splits.items())
    return tlkit.LoadedDataset(classes=tuple(names), splits=splits, notes=notes)


def _light(member: ShardGroup) -> ShardGroup:
    """The member without its image bytes (their hash kept), so listing holds one image at a time."""
    return ShardGroup(member.shard, member.key, member.name, b"", member.cls, {**member.meta, "sha256": member.sha256})


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
