"""Images stored inside Arrow tables (a Hugging Face ``datasets`` copy saved locally), read with pyarrow only.

``Dataset.save_to_disk`` writes Arrow IPC streams (``data-00000-of-00001.arrow``); the hub ships Parquet
(``train-00000-of-00001.parquet``). Either holds an image column (a struct ``{bytes, path}``, or plain
binary) and a label column; the ``huggingface`` entry of the schema metadata (JSON) names the
``ClassLabel`` classes. An image here is not a file: its bytes go to the engine's decoder like a tar
shard member's (:class:`~tlkit.contract.specs.ShardMember`: ``shard`` the table file, ``name``
``<column>/<row>``, ``sha256`` of the bytes, so a table image and the file it came from share cached
features), and :func:`stream` hands them on as :class:`~tlkit.sources.shards.ShardGroup` records.

A table is untrusted. Only Arrow IPC and Parquet are parsed, by pyarrow, and nothing in them is
unpickled or run: extension types (``arrow.py_extension_type`` held pickles) are never used as a
column tlkit reads, ``pandas`` metadata is never read, ``datasets`` is never imported. Each file must be
a regular file of at most ``TLKIT_MAX_TABLE_BYTES``; an image above ``TLKIT_MAX_MEMBER_BYTES`` is a bad
image, unread; a Parquet row group that would inflate beyond :data:`MAX_ROW_GROUP_BYTES`, and an Arrow
table with compressed buffers (``save_to_disk`` never compresses), are refused before they are read; and
a damaged or cut file is one :class:`~tlkit.errors.DataError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlkit.errors import DataError
from tlkit.sources.shards import ShardGroup, max_member_bytes
from tlkit.util.units import human_bytes

TABLE_SUFFIXES = (".arrow", ".parquet")
TABLE_BYTES_ENV = "TLKIT_MAX_TABLE_BYTES"
DEFAULT_MAX_TABLE_BYTES = 64 * 2**30
MAX_ROW_GROUP_BYTES = 2 * 2**30  # inflated size of the columns read from one Parquet row group
MAX_METADATA_BYTES = 16 * 2**20  # the schema's JSON features
BATCH_ROWS = 64
PLAIN_COLUMN = re.compile(r"(?!\.+$)[\w .()+-]{1,200}")  # shown as <file>/<column>/<row>: never '..', never '/'


@dataclass(frozen=True)
class TableSchema:
    """What one table file holds: each column's Arrow type, which columns hold images, ``ClassLabel`` names."""

    path: str
    columns: dict[str, str]
    image_columns: tuple[str, ...]
    label_columns: tuple[str, ...]  # integer or string columns: what a class may be read from
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    foreign_columns: tuple[str, ...] = ()  # extension types: never read


@dataclass(frozen=True)
class TableRow:
    """One row as a loader lists it: its member name, raw label (``None`` when null) and image digest.

    ``error`` is set (and ``sha256`` empty) when the image cannot be read: no bytes, too large.
    """

    file: str
    row: int
    name: str
    label: int | str | None
    sha256: str
    error: str = ""


def is_table(url: str) -> bool:
    """``url`` names an Arrow or Parquet file (a table of images), not a tar shard."""
    return url.lower().endswith(TABLE_SUFFIXES)


def member_name(column: str, row: int) -> str:
    """The name of the image in ``column`` at ``row`` (0-based, over the whole file)."""
    return f"{column}/{row:06d}"


def max_table_bytes() -> int:
    """The largest table file read (``TLKIT_MAX_TABLE_BYTES``, default 64 GiB)."""
    from tlkit.util.units import positive_number

    try:
        return int(min(positive_number(TABLE_BYTES_ENV, DEFAULT_MAX_TABLE_BYTES), 2**62))
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError("reading Arrow/Parquet tables needs pyarrow: pip install 'tlkit[hf]'") from None


def _checked(path: str) -> None:
    _require_pyarrow()
    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(f"cannot read the table {path} ({exc.strerror or exc}); check dataset.root") from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"the table {path} is not a regular file; tlkit reads only .arrow and .parquet files")
    if info.st_size > max_table_bytes():
        raise DataError(f"the table {path} is {human_bytes(info.st_size)}, over {TABLE_BYTES_ENV} ({human_bytes(max_table_bytes())}); raise it if you trust the file")


def _unreadable(path: str, exc: BaseException) -> DataError:
    kind = "Parquet" if path.lower().endswith(".parquet") else "Arrow IPC"
    return DataError(f"cannot read the table {path} ({type(exc).__name__}: {str(exc)[:160]}); it is not a readable {kind} file (damaged or cut short?): write it again")


def _schema(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _checked(path)
    try:
        if path.lower().endswith(".parquet"):
            return pq.ParquetFile(path).schema_arrow
        with pa.memory_map(path) as source:
            file_format = source.read(6) == b"ARROW1"
            source.seek(0)
            return (pa.ipc.open_file(source) if file_format else pa.ipc.open_stream(source)).schema
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None


def _features(schema: Any) -> dict[str, Any]:
    """The ``datasets`` features from the schema metadata (JSON only), or ``{}``."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw or len(raw) > MAX_METADATA_BYTES:
        return {}
    try:
        record = json.loads(raw)
        features = record.get("info", {}).get("features", {}) if isinstance(record, dict) else {}
    except (ValueError, AttributeError):
        return {}
    return features if isinstance(features, dict) else {}


def _class_names(spec: Any) -> tuple[str, ...] | None:
    if isinstance(spec, dict) and spec.get("_type") == "ClassLabel" and isinstance(spec.get("names"), list):
        names = spec["names"]
        if all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


def _foreign(column: Any) -> bool:
    """An extension type (registered, or only named in the field's metadata: ``arrow.py_extension_type`` held a
    pickle): never a column tlkit reads, whatever its storage."""
    import pyarrow as pa

    return isinstance(column.type, pa.ExtensionType) or any(k.startswith(b"ARROW:extension") for k in (column.metadata or {}))


def _is_image_type(kind: Any) -> bool:
    import pyarrow as pa

    if isinstance(kind, pa.ExtensionType):
        return False
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and _is_image_type(kind.field("bytes").type)


def _is_label_type(kind: Any) -> bool:
    import pyarrow as pa

    if isinstance(kind, pa.ExtensionType):
        return False
    return bool(pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind))


def read_schema(path: str | Path) -> TableSchema:
    """The columns of the table at ``path``; a file that is not a readable Arrow/Parquet table is a :class:`DataError`.

    Public as ``tlkit.image_table_schema``.
    """
    schema = _schema(str(path))
    features = _features(schema)
    names = [f.name for f in schema]
    classes = {n: c for n in names if (c := _class_names(features.get(n))) is not None}
    return TableSchema(
        path=str(path),
        columns={f.name: str(f.type) for f in schema},
        image_columns=tuple(f.name for f in schema if not _foreign(f) and _is_image_type(f.type) and PLAIN_COLUMN.fullmatch(f.name)),
        label_columns=tuple(f.name for f in schema if not _foreign(f) and _is_label_type(f.type)),
        class_names=classes,
        foreign_columns=tuple(f.name for f in schema if _foreign(f)),
    )


def _parquet_batches(path: str, columns: list[str]) -> Iterator[Any]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    meta = handle.metadata
    for group in range(meta.num_row_groups):
        chunks = meta.row_group(group)
        inflated = sum(chunks.column(i).total_uncompressed_size for i in range(chunks.num_columns)
                       if chunks.column(i).path_in_schema.split(".")[0] in columns)
        if inflated > MAX_ROW_GROUP_BYTES:
            raise DataError(f"the table {path}: row group {group} inflates to {human_bytes(inflated)}, over {human_bytes(MAX_ROW_GROUP_BYTES)}; write it with smaller row groups")
    # One row a batch: a dictionary-encoded column repeats one stored value in every row, so a batch of n rows
    # could materialise n times what the row group's inflated size says; one row never exceeds it.
    yield from handle.iter_batches(batch_size=1, columns=columns)


def _slot(meta: bytes, table: int, slot: int) -> int:
    """The offset of field ``slot`` inside the flatbuffers table at ``table`` (0: absent)."""
    vtable = table - struct.unpack_from("<i", meta, table)[0]
    size, at = struct.unpack_from("<H", meta, vtable)[0], 4 + 2 * slot
    return struct.unpack_from("<H", meta, vtable + at)[0] if at < size else 0


def _compressed(meta: bytes, kind: str) -> bool:
    """A batch message whose body is compressed: its ``RecordBatch`` has a ``BodyCompression`` (Arrow's Message.fbs).

    Message: header is slot 2; RecordBatch: compression is slot 3; DictionaryBatch: its RecordBatch is slot 1.
    """
    message = struct.unpack_from("<I", meta, 0)[0]
    header = _slot(meta, message, 2)
    if not header:
        return False
    table = message + header + struct.unpack_from("<I", meta, message + header)[0]
    if kind == "dictionary batch":
        data = _slot(meta, table, 1)
        if not data:
            return False
        table = table + data + struct.unpack_from("<I", meta, table + data)[0]
    return _slot(meta, table, 3) != 0


def _refuse_compressed(path: str, source: Any) -> None:
    """A compressed body could inflate without bound when read (a bomb): refused before any batch is read.

    ``datasets`` never compresses what ``save_to_disk`` writes. The scan reads message headers only.
    """
    import pyarrow as pa

    try:
        for message in pa.ipc.MessageReader.open_stream(source):
            if message.type in ("record batch", "dictionary batch") and _compressed(message.metadata.to_pybytes(), message.type):
                raise DataError(f"the table {path} is compressed Arrow IPC, which could inflate without bound; tlkit reads uncompressed tables (as save_to_disk writes them)")
    except struct.error:
        raise DataError(f"cannot read the table {path}: a message header is damaged; write it again") from None


def _ipc_batches(path: str, columns: list[str]) -> Iterator[Any]:
    import pyarrow as pa

    with pa.memory_map(path) as source:  # batches point into the mapping: nothing read twice, nothing held
        file_format = source.read(6) == b"ARROW1"
        source.seek(8 if file_format else 0)  # the file format is a stream behind an 8-byte magic
        _refuse_compressed(path, source)
        source.seek(0)
        reader: Any = pa.ipc.open_file(source) if file_format else pa.ipc.open_stream(source)
        batches: Any = (reader.get_batch(i) for i in range(reader.num_record_batches)) if file_format else iter(reader)
        for batch in batches:
            yield batch.select(columns)


def _batches(path: str, columns: list[str]) -> Iterator[Any]:
    """Record batches of ``columns`` only; any damage found on the way is a :class:`DataError` naming the file."""
    import pyarrow as pa

    _checked(path)
    read = _parquet_batches if path.lower().endswith(".parquet") else _ipc_batches
    try:
        yield from read(path, columns)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from None


def _image_bytes(images: Any) -> tuple[Any, Any]:
    """(bytes array, path array or None) of an image column: a ``{bytes, path}`` struct or plain binary."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(images.type):
        paths = pc.struct_field(images, "path") if images.type.get_field_index("path") >= 0 else None
        return pc.struct_field(images, "bytes"), paths
    return images, None


def _cells(images: Any, limit: int, rows: Sequence[int] | None = None) -> Iterator[tuple[bytes, str]]:
    """Each image cell's bytes (of ``rows`` only, when given), or ``b""`` and why it is not read (no bytes, only a path, too large)."""
    import pyarrow.compute as pc

    data, paths = _image_bytes(images)
    lengths = pc.binary_length(data).to_pylist()
    for i in range(len(lengths)) if rows is None else rows:
        size = lengths[i]
        if not images[i].is_valid or size is None:
            where = paths[i].as_py() if paths is not None and images[i].is_valid else None
            yield b"", (f"holds only a path ({str(where)[:80]!r}), not the image's bytes: tlkit reads images stored in the table, never files it names"
                        if where else "holds no image")
        elif size > limit:
            yield b"", f"the image is {size} bytes, above the limit of {limit} (TLKIT_MAX_MEMBER_BYTES); not read"
        else:
            yield data[i].as_py(), ""


def _labels(batch: Any, label: str | None) -> list[Any]:
    if label is None:
        return [None] * batch.num_rows
    return list(batch.column(label).to_pylist())


def read_rows(path: str | Path, image: str, label: str | None) -> Iterator[TableRow]:
    """Every row of the table at ``path``: its image's name and sha256 (bytes hashed, then dropped) and its raw label.

    Memory stays that of one batch of rows. Public as ``tlkit.read_image_table``.
    """
    limit, row, file = max_member_bytes(), 0, str(path)
    columns = [image] if label is None or label == image else [image, label]
    for batch in _batches(file, columns):
        for (data, error), raw in zip(_cells(batch.column(image), limit), _labels(batch, label)):
            digest = hashlib.sha256(data).hexdigest() if not error else ""
            yield TableRow(file, row, member_name(image, row), raw, digest, error)
            row += 1


def stream(urls: Sequence[str], *, wanted: Callable[[str, str], bool] | None = None) -> Iterator[ShardGroup]:
    """The images of table files ``urls`` as :class:`ShardGroup` records (the decoder's input), in order."""
    limit = max_member_bytes()
    for url in urls:
        columns = list(read_schema(url).image_columns)
        if not columns:
            continue
        row = 0
        for batch in _batches(url, columns):
            for column in columns:
                chosen = [i for i in range(batch.num_rows) if wanted is None or wanted(url, member_name(column, row + i))]
                for i, (data, error) in zip(chosen, _cells(batch.column(column), limit, chosen)):  # only the wanted bytes are copied
                    yield ShardGroup(url, str(row + i), member_name(column, row + i), data, None, {}, error)
            row += batch.num_rows
