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
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from tlkit.errors import WeightsError

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
    flat = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype) if storage.numel else torch.empty(0, dtype=storage.dtype)
    return torch.as_strided(flat, tuple(size), tuple(stride), int(offset)).clone()


_SCRIPT_CLASSES: dict[str, type] = {}


def _script_class(qualname: str) -> type:
    if qualname not in _SCRIPT_CLASSES:
        _SCRIPT_CLASSES[qualname] = type("ScriptObject", (ScriptObject,), {"qualname": qualname})
    return _SCRIPT_CLASSES[qualname]


class _Unpickler(pickle.Unpickler):
    """Only tensors, storages, ordered dicts and TorchScript attribute holders; everything else is refused."""

    def __init__(self, data: bytes, records: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.records, self.prefix = records, prefix

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
        try:
            data = self.records.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise pickle.UnpicklingError(f"storage record data/{key} is missing") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if not isinstance(numel, int) or numel < 0 or len(data) < numel * itemsize:
            raise pickle.UnpicklingError(f"storage record data/{key} is shorter than its {numel} elements")
        return _Storage(dtype, data[: numel * itemsize], numel)


def is_script_archive(path: Path) -> bool:
    """True for a TorchScript-format zip (it has ``constants.pkl``), which ``torch.load`` cannot read safely."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as records:
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in records.namelist())


def _flatten(value: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Tensors of nested TorchScript objects as ``a.b.name``; other attributes (``training``, ints) are left out."""
    attributes = value.attributes if isinstance(value, ScriptObject) else value if isinstance(value, dict) else {}
    for key, item in attributes.items():
        name = f"{prefix}{str(key).replace('|', '.')}"
        if isinstance(item, torch.Tensor):
            out[name] = item
        elif isinstance(item, (ScriptObject, dict)):
            _flatten(item, f"{name}.", out)


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
            root = _Unpickler(records.read(pickles[0]), records, prefix).load()
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"weights file {path} was refused: {exc} (TorchScript archives are read without running code)") from exc
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"weights file {path} is a damaged TorchScript archive ({type(exc).__name__}: {exc}); save or download it again") from exc
    tensors: dict[str, torch.Tensor] = {}
    _flatten(root, "", tensors)
    if not tensors:
        raise WeightsError(f"weights file {path} is a TorchScript archive without tensors")
    return tensors
