"""Named tensors out of a TorchScript-format zip (libtorch's ``OutputArchive``, tch-rs ``.ot``), running nothing.

tch-rs users hold weights such as ``resnet18.ot``: ``VarStore::save`` calls ``at_save_multi``, which
writes each tensor with ``torch::serialize::OutputArchive::write(name, tensor)`` and saves the
archive as a TorchScript module (``<name>/data.pkl`` plus one ``<name>/data/<key>`` record per
storage). tch-rs replaces the ``.`` of parameter names with ``|`` (libtorch refuses dots in
attribute names) and turns them back when loading; so does this reader.

``torch.jit.load`` would compile and run the TorchScript code the archive carries, and
``torch.load(weights_only=True)`` refuses TorchScript archives, so the records are read here: the
pickle goes through an unpickler that knows only the few globals a tensor needs (anything else,
such as ``os.system``, is refused before it is called), a TorchScript object is a plain attribute
holder, and storages are read as raw bytes from the zip and viewed with the recorded dtype,
offset, sizes and strides. ``code/`` is never read.

Every read is bounded before it happens. ``data.pkl`` may hold at most :data:`MAX_PICKLE_BYTES`; a
storage record is inflated in bounded steps and only as far as its tensor needs, after its zip
header was checked: a record may not expand more than :data:`MAX_RATIO` times its compressed size
(weights barely compress; a deflated run of zeros expands a thousandfold), nor may all records
together expand more than that over the archive's size (beyond :data:`RATIO_FLOOR_BYTES`). A tensor
may not view more elements than its storage holds, and nesting deeper than :data:`MAX_DEPTH` is
refused, so a crafted file is one line, not gigabytes of memory or a ``RecursionError``.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from tlkit.errors import WeightsError

MAX_PICKLE_BYTES = 64 * 2**20  # a data.pkl describes tensors; a ViT-H's is under 1 MiB
MAX_RATIO = 100  # the most a storage record may expand (weights compress by a few percent)
RATIO_FLOOR_BYTES = 64 * 2**20  # below this much inflated data the ratio is not checked (tiny records compress oddly)
MAX_DEPTH = 100  # module nesting in real archives is under 20
_STEP = 1 << 20

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptObject:
    """Stands in for an instance of a TorchScript class (``__torch__.*``): it only keeps its attributes."""

    qualname = "?"

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _Storage:
    """The storage a tensor refers to: a dtype and the bytes of one zip record."""

    def __init__(self, dtype: torch.dtype, data: bytes, numel: int) -> None:
        self.dtype, self.data, self.numel = dtype, data, numel


def _identity(value: Any, *_: Any) -> Any:
    return value


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for raw bytes: a strided view, copied out."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    if not all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride)) or len(size) != len(stride):
        raise pickle.UnpicklingError("a tensor with a malformed size, stride or offset")
    if math.prod(size) > storage.numel:
        raise pickle.UnpicklingError(f"a tensor of {math.prod(size)} elements over a storage of {storage.numel}")
    flat = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype) if storage.numel else torch.empty(0, dtype=storage.dtype)
    return torch.as_strided(flat, tuple(size), tuple(stride), int(offset)).clone()


_SCRIPT_CLASSES: dict[str, type] = {}


def _script_class(qualname: str) -> type:
    if qualname not in _SCRIPT_CLASSES:
        _SCRIPT_CLASSES[qualname] = type("ScriptObject", (ScriptObject,), {"qualname": qualname})
    return _SCRIPT_CLASSES[qualname]


class _Unpickler(pickle.Unpickler):
    """Only tensors, storages, ordered dicts and TorchScript attribute holders; everything else is refused."""

    def __init__(self, data: bytes, records: zipfile.ZipFile, prefix: str, archive_bytes: int) -> None:
        super().__init__(io.BytesIO(data))
        self.records, self.prefix = records, prefix
        self.archive_bytes, self.inflated = archive_bytes, 0

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _identity
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and (name == "restore_type_tag" or (name.startswith("build_") and name.endswith("list"))):
            return _identity
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        raise pickle.UnpicklingError(f"unsupported GLOBAL {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, dtype, key, _location, numel = pid
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage record data/{key} has no element count")
        need = numel * torch.empty(0, dtype=dtype).element_size()
        self.inflated += need
        if self.inflated > RATIO_FLOOR_BYTES and self.inflated > MAX_RATIO * self.archive_bytes:
            raise pickle.UnpicklingError(f"its records expand to more than {self.inflated >> 20} MiB, over {MAX_RATIO}x the file's size (a zip bomb?)")
        data = read_record(self.records, f"{self.prefix}data/{key}", need, self.archive_bytes, f"{numel} elements")
        return _Storage(dtype, data, numel)


def read_record(records: zipfile.ZipFile, name: str, need: int, archive_bytes: int, what: str = "") -> bytes:
    """The first ``need`` bytes of record ``name``, inflated in steps, after its header was checked (see the module doc)."""
    try:
        info = records.getinfo(name)
    except KeyError:
        raise pickle.UnpicklingError(f"storage record {name.split('/', 1)[-1]} is missing") from None
    shown = name.split("/", 1)[-1]
    if info.file_size < need:
        raise pickle.UnpicklingError(f"storage record {shown} is shorter than its {what or f'{need} bytes'}")
    if info.compress_size > archive_bytes:
        raise pickle.UnpicklingError(f"storage record {shown} claims more compressed bytes than the file holds")
    if need > RATIO_FLOOR_BYTES and need > MAX_RATIO * max(1, info.compress_size):
        raise pickle.UnpicklingError(f"storage record {shown} expands {info.compress_size} bytes to {need >> 20} MiB, over {MAX_RATIO}x (a zip bomb?)")
    chunks: list[bytes] = []
    done = 0
    with records.open(info) as record:
        while done < need:
            block = record.read(min(_STEP, need - done))
            if not block:
                break
            chunks.append(block)
            done += len(block)
    if done < need:
        raise pickle.UnpicklingError(f"storage record {shown} is shorter than its {what or f'{need} bytes'}")
    return b"".join(chunks)


def is_script_archive(path: Path) -> bool:
    """True for a TorchScript-format zip (it has ``constants.pkl``), which ``torch.load`` cannot read safely."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as records:
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in records.namelist())


class _TooDeep(Exception):
    pass


def _flatten(value: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    """Tensors of nested TorchScript objects as ``a.b.name``; other attributes (``training``, ints) are left out."""
    if depth > MAX_DEPTH:
        raise _TooDeep()
    attributes = value.attributes if isinstance(value, ScriptObject) else value if isinstance(value, dict) else {}
    for key, item in attributes.items():
        name = f"{prefix}{str(key).replace('|', '.')}"
        if isinstance(item, torch.Tensor):
            out[name] = item
        elif isinstance(item, (ScriptObject, dict)):
            _flatten(item, f"{name}.", out, depth + 1)


def read_named_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor a TorchScript-format archive holds, by name (``|`` read as ``.``), without running its code."""
    try:
        with zipfile.ZipFile(path) as records:
            pickles = [name for name in records.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise WeightsError(f"weights file {path} is a zip but not one TorchScript archive ({len(pickles)} data.pkl records)")
            prefix = pickles[0][: -len("data.pkl")]
            order = records.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in records.namelist() else "little"
            if order != "little":
                raise WeightsError(f"weights file {path} stores {order}-endian tensors; save it again on a little-endian machine")
            size, described = path.stat().st_size, records.getinfo(pickles[0]).file_size
            if described > MAX_PICKLE_BYTES:
                raise pickle.UnpicklingError(f"its data.pkl is {described >> 20} MiB, over the {MAX_PICKLE_BYTES >> 20} MiB any archive needs")
            root = _Unpickler(read_record(records, pickles[0], described, size), records, prefix, size).load()
        tensors: dict[str, torch.Tensor] = {}
        _flatten(root, "", tensors)
    except _TooDeep:
        raise WeightsError(f"weights file {path} was refused: its objects are nested more than {MAX_DEPTH} deep (a crafted file?)") from None
    except RecursionError:
        raise WeightsError(f"weights file {path} was refused: its pickle is nested too deep to read (a crafted file?)") from None
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"weights file {path} was refused: {exc} (TorchScript archives are read without running code)") from exc
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"weights file {path} is a damaged TorchScript archive ({type(exc).__name__}: {exc}); save or download it again") from exc
    if not tensors:
        raise WeightsError(f"weights file {path} is a TorchScript archive without tensors")
    return tensors
