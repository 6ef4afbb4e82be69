"""``hf_datasets``: a Hugging Face ``datasets`` image set saved locally, read with pyarrow (``datasets`` not needed).

``root`` is what ``DatasetDict.save_to_disk`` wrote (``dataset_dict.json``, one folder per split with
``state.json`` and ``data-*.arrow``), what ``Dataset.save_to_disk`` wrote (one set, no splits), or a
folder of Parquet files as the hub ships them (``data/train-00000-of-00001.parquet``: a file is in split
S when its name starts with ``S-`` or a folder on its way is named S). The image column holds
``{bytes, path}`` structs (or plain bytes); the label column ``ClassLabel`` indices (names from the
features metadata) or class names. Without a test split the set is split by tlkit's seeded holdout rule
(``tlkit.holdout_split``, as ``imagefolder``'s ``split:``), each image keyed by its content digest (so
byte-identical copies land on the same side).

Images are never written out: each is a :class:`tlkit.ShardMember` of its table (``<file>/image/000012``),
its bytes decoded by the engine as a file's are (``images.on_bad_image``), its features cached under the
sha256 of those bytes, which is the sha256 of the file it came from. Only ``.arrow`` and ``.parquet``
files are opened (anything else beside them, a ``.pkl`` say, is left out unopened and named in a note), the
JSON files are size-bounded, and nothing is unpickled or run (see ``tlkit.image_table_schema``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, Lt
from pydantic import ConfigDict

import tlkit
from tlkit.errors import DataError, did_you_mean

MAX_JSON_BYTES = 4 * 2**20
MAX_FILES = 100_000  # files looked at under root
HUB_FILE = re.compile(r"([\w.]+?)-\d{5}-of-\d{5}\.parquet")  # the hub's <split>-00000-of-00001.parquet
PLAIN_NAME = re.compile(r"[\w][\w.-]{0,200}")
KNOWN_FILES = ("dataset_dict.json", "dataset_info.json", "state.json", "README.md", ".gitattributes")


@dataclass(frozen=True)
class HfSplitOptions:
    __pydantic_config__ = ConfigDict(extra="forbid")

    test_fraction: Annotated[float, Gt(0), Lt(1)] = field(default=0.2, metadata={"help": "share of each class's images held out as test"})
    seed: Annotated[int, Ge(0)] = field(default=0, metadata={"help": "which images are held out (same seed, same split)"})


@dataclass(frozen=True)
class HfDatasetOptions:
    root: str = field(metadata={"help": "folder written by Dataset(Dict).save_to_disk, or holding the set's Parquet files"})
    train: str = field(default="train", metadata={"help": "name of the training split"})
    test: str = field(default="test", metadata={"help": "name of the test split (validation, val, ...)"})
    image: str | None = field(default=None, metadata={"help": "image column (default: the one column of images)"})
    label: str | None = field(default=None, metadata={"help": "label column (default: the one ClassLabel column, else 'label')"})
    split: HfSplitOptions | None = field(default=None, metadata={"help": "{test_fraction, seed} for a set without a test split (default 0.2, 0)"})


def _json(path: Path) -> Any:
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{path} is not a regular file of at most {MAX_JSON_BYTES // 2**20} MiB; is dataset.root what save_to_disk wrote?")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}); is dataset.root what save_to_disk wrote?") from None


def _saved_files(folder: Path, notes: list[str]) -> list[Path]:
    """The ``.arrow`` files ``state.json`` lists in ``folder`` (plain names, inside it); stray files are noted, never opened."""
    state = folder / "state.json"
    if state.exists():
        record = _json(state)
        listed = record.get("_data_files") if isinstance(record, dict) else None
        if not isinstance(listed, list) or not all(isinstance(e, dict) and isinstance(e.get("filename"), str) for e in listed):
            raise DataError(f"{state} has no '_data_files' list of file names; write the set again with save_to_disk")
        names = [e["filename"] for e in listed]
    else:
        names = sorted(p.name for p in itertools.islice(folder.iterdir(), MAX_FILES) if p.name.endswith(".arrow"))
    for name in names:
        if not PLAIN_NAME.fullmatch(name) or not name.endswith(".arrow"):
            raise DataError(f"{state}: {name[:80]!r} is not a plain .arrow file name; tlkit reads only Arrow tables inside {folder}")
    real = os.path.realpath(folder) + os.sep
    files = [folder / n for n in names]
    for path in files:
        if not os.path.realpath(path).startswith(real):
            raise DataError(f"{path} leads outside {folder} (a link); tlkit reads only the tables inside it")
    _note_strays(folder, set(names), notes)
    return files


def _note_strays(folder: Path, used: set[str], notes: list[str]) -> None:
    strays = sorted(p.name for p in itertools.islice(folder.iterdir(), MAX_FILES)
                    if p.is_file() and p.name not in used and p.name not in KNOWN_FILES)
    if strays:
        shown = ", ".join(strays[:4]) + (", ..." if len(strays) > 4 else "")
        notes.append(f"{folder}: left out {len(strays)} file{'s' if len(strays) != 1 else ''} that are not its Arrow tables (never opened): {shown}")


def _parquet_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, files in itertools.islice(os.walk(root), MAX_FILES):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and len(Path(folder, d).relative_to(root).parts) < 4)
        found.extend(Path(folder, f) for f in sorted(files) if f.endswith(".parquet"))
    real = os.path.realpath(root) + os.sep
    return [p for p in found if os.path.realpath(p).startswith(real)]


def _parquet_split(path: Path, root: Path, names: tuple[str, str]) -> str | None:
    for name in names:
        if path.name.startswith(f"{name}-") or path.stem == name or name in path.relative_to(root).parts[:-1]:
            return name
    return None


def _split_dict(root: Path, options: HfDatasetOptions, notes: list[str]) -> dict[str, list[Path]]:
    record = _json(root / "dataset_dict.json")
    splits = record.get("splits") if isinstance(record, dict) else None
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise DataError(f"{root / 'dataset_dict.json'} has no 'splits' list; write the set again with save_to_disk")
    for key, name in (("train", options.train), ("test", options.test)):
        if name not in splits:
            raise DataError(f"{root} has no split '{name}'{did_you_mean(name, splits)} (it has {', '.join(splits)}); set dataset.{key}")
        if not PLAIN_NAME.fullmatch(name) or not (root / name).is_dir():
            raise DataError(f"{root}: the split '{name}' has no folder of its own; write the set again with save_to_disk")
        if not os.path.realpath(root / name).startswith(os.path.realpath(root) + os.sep):
            raise DataError(f"{root / name} leads outside {root} (a link); tlkit reads only the splits inside it")
    return {"train": _saved_files(root / options.train, notes), "test": _saved_files(root / options.test, notes)}


def _tables(root: Path, options: HfDatasetOptions, notes: list[str]) -> dict[str, list[Path]]:
    """``{"train": [...], "test": [...]}`` or, for a set without a test split, ``{"all": [...]}``."""
    if (root / "dataset_dict.json").exists():
        return _split_dict(root, options, notes)
    if (root / "state.json").exists():
        return {"all": _saved_files(root, notes)}
    files = _parquet_files(root)
    if not files:
        raise DataError(f"{root} holds no dataset_dict.json, state.json or .parquet files; set dataset.root to what save_to_disk wrote")
    split = {p: _parquet_split(p, root, (options.train, options.test)) for p in files}
    train, test = [p for p in files if split[p] == options.train], [p for p in files if split[p] == options.test]
    if test:
        if not train:
            raise DataError(f"{root} has Parquet files of split '{options.test}' but none of '{options.train}'; set dataset.train")
        return {"train": train, "test": test}
    others = sorted({m.group(1) for p in files if (m := HUB_FILE.fullmatch(p.name)) and m.group(1) != options.train})
    if others:  # a test split under another name: say so rather than split the training files
        raise DataError(f"{root} has no Parquet files of split '{options.test}'{did_you_mean(options.test, others)} (it has {', '.join(others)}); set dataset.test")
    return {"all": train or files}


def _columns(first: Path, options: HfDatasetOptions) -> tuple[str, str, tuple[str, ...] | None]:
    """(image column, label column, ClassLabel names or None) from the first table's schema."""
    schema = tlkit.image_table_schema(first)
    cols = list(schema.columns)
    image = options.image or _only(schema.image_columns, ("image", "img"), first, "image", cols)
    if image not in schema.columns:
        raise DataError(f"{first} has no column '{image}'{did_you_mean(image, cols)}; set dataset.image")
    for column in {image, options.label} & set(schema.foreign_columns):
        raise DataError(f"{first}: column '{column}' has an Arrow extension type, which tlkit never reads (it could hold pickled objects); set dataset.{'image' if column == image else 'label'}")
    if image not in schema.image_columns:
        raise DataError(f"{first}: column '{image}' holds {schema.columns[image]}, not images ({{bytes, path}} structs or binary); set dataset.image")
    label = options.label or _only(tuple(schema.class_names), ("label", "labels"), first, "label", cols, schema.label_columns)
    if label not in schema.columns:
        raise DataError(f"{first} has no column '{label}'{did_you_mean(label, cols)}; set dataset.label")
    if label not in schema.label_columns:
        raise DataError(f"{first}: column '{label}' holds {schema.columns[label]}, not class indices or names; set dataset.label")
    return image, label, schema.class_names.get(label)


def _only(found: tuple[str, ...], usual: tuple[str, ...], first: Path, key: str, cols: list[str], fallback: tuple[str, ...] = ()) -> str:
    if len(found) == 1:
        return found[0]
    for name in usual:
        if name in found or (not found and name in fallback):
            return name
    kind = "several" if found else "no"
    raise DataError(f"{first} has {kind} {key} columns ({', '.join(found or cols)}); set dataset.{key} to the one to use")


def _rows(files: list[Path], image: str, label: str, names: tuple[str, ...] | None) -> list[Any]:
    """Every row of ``files``; each table must have the first one's columns and ``ClassLabel`` names (or indices would mean other classes)."""
    rows: list[Any] = []
    for path in files:
        schema = tlkit.image_table_schema(path)
        for column in (image, label):
            if column not in schema.columns:
                raise DataError(f"{path} has no column '{column}' (the first table has it); all tables of a set share their columns")
        if schema.class_names.get(label) != names:
            raise DataError(f"{path}: the ClassLabel names of '{label}' differ from the first table's {list(names or [])[:5]}; save all splits with one set of class names")
        rows.extend(tlkit.read_image_table(path, image, label))
    return rows


def _class_of(row: Any, names: tuple[str, ...] | None) -> str:
    where = f"{row.file}: row {row.row}"
    if row.label is None or (isinstance(row.label, int) and row.label < 0):
        raise DataError(f"{where} has no label ({row.label!r}); every image needs its class (label the row, or leave it out of the set)")
    if names is not None:
        if not isinstance(row.label, int) or row.label >= len(names):
            raise DataError(f"{where}: class index {row.label!r} is outside the {len(names)} ClassLabel names")
        return names[row.label]
    return str(row.label)


def _sample(row: Any, label: int) -> tlkit.Sample:
    return tlkit.Sample(Path(row.file) / row.name, label, tlkit.ShardMember(row.file, row.name, row.sha256))


def load_hf_datasets(options: HfDatasetOptions) -> tlkit.LoadedDataset:
    """A Hugging Face datasets image set saved locally (save_to_disk or Parquet), read with pyarrow."""
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; set dataset.root to what Dataset.save_to_disk wrote (or a folder of .parquet files)")
    notes: list[str] = []
    tables = _tables(root, options, notes)
    first = next(iter(tables.values()))
    if not first:
        raise DataError(f"{root}: the {next(iter(tables))} split lists no .arrow table")
    image, label, names = _columns(first[0], options)
    listed = {split: [(r, _class_of(r, names)) for r in _rows(files, image, label, names)] for split, files in tables.items()}
    if "all" in listed:
        return _held_out(listed["all"], names, options.split or HfSplitOptions(), root, notes)
    if options.split is not None:
        raise DataError(f"{root} has a '{options.test}' split; remove dataset.split (or set dataset.test to a split it lacks)")
    classes = names or tuple(sorted({c for _, c in listed["train"]}))
    for row, cls in listed["test"]:
        if cls not in classes:
            raise DataError(f"{row.file}: row {row.row}: class {cls!r} has no training images{did_you_mean(str(cls), classes)}")
    splits = {split: [_sample(r, classes.index(str(c))) for r, c in rows] for split, rows in listed.items()}
    notes.extend(f"{split}: {len(tables[split])} table{'s' if len(tables[split]) != 1 else ''}, {len(s)} images" for split, s in splits.items())
    return tlkit.LoadedDataset(classes=tuple(classes), splits=splits, notes=tuple(notes))


def _held_out(rows: list[tuple[Any, str]], names: tuple[str, ...] | None, split: HfSplitOptions, root: Path, notes: list[str]) -> tlkit.LoadedDataset:
    classes = names or tuple(sorted({str(c) for _, c in rows}))
    samples = [_sample(r, classes.index(str(c))) for r, c in rows]
    keys = [r.sha256 or f"{r.file}\0{r.row}" for r, _ in rows]  # content: byte-identical copies go the same way
    held = tlkit.holdout_split(keys, [s.label for s in samples], split.test_fraction, split.seed)
    if not held.test:
        raise DataError(f"{root}: no class has two images, so none can be held out as test; add images or a test split")
    notes.append(f"{root} has no test split: {split.test_fraction:.0%} of each class held out as test (seed {split.seed}; split.csv in the run directory)")
    notes.extend(f"class '{classes[c]}' has a single image: it stays in train (its test recall cannot be measured)" for c in held.single_image_classes)
    splits = {"train": [s for i, s in enumerate(samples) if i not in held.test], "test": [s for i, s in enumerate(samples) if i in held.test]}
    return tlkit.LoadedDataset(classes=classes, splits=splits, notes=tuple(notes))


@tlkit.hookimpl
def register_datasets(register: Any) -> None:
    register(
        tlkit.DatasetSpec(
            name="hf_datasets",
            load=load_hf_datasets,
            description="a Hugging Face datasets image set saved locally (save_to_disk folder or Parquet files), read without datasets",
            options=HfDatasetOptions,
        )
    )
