"""Convert a frozen backbone for ONNX Runtime or OpenVINO, once, and keep the result on disk.

Conversion costs seconds to minutes, so a converted model is stored under tlkit's cache
(``<cache>/runtimes/<key>/``) and reused by every later run with the same key: the backbone, its
options, the digest of its actual parameters (:func:`tlkit.util.hashing.weights_digest`), the runtime, the precision, the runtime's and torch's
versions and the input size. A folder is built under a temporary name and renamed into place, so a
crash never leaves a half-written model where a run would find it, and ``manifest.json`` records that
identity and the sha256 of every file: a damaged model, or one copied or linked over another key (made
for another identity), is detected on load and rebuilt, never used; links in the store are never
followed. Only the exporter's refusal (or disagreement with eager) is stored as a verdict: a failure
of the disk or the machine while converting (:class:`TransientFailure`) is not. A store that cannot be
written is read all the same, and a model missing from it is converted for the run alone
(:func:`build_private`).

ONNX goes through torch's current exporter (``torch.onnx.export(..., dynamo=True)``), OpenVINO through
``openvino.convert_model(model, example_input=...)`` (no ONNX step). Both keep the batch dimension
dynamic. int8 is post-training static quantisation of the ONNX model (ONNX Runtime's
``quantize_static``, QDQ format) calibrated on images the caller supplies; OpenVINO reads the same
quantised ONNX file and runs it in int8.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import torch

from tlkit.util.atomic import publish_folder, write_atomic
from tlkit.util.hashing import file_sha256, json_sha256
from tlkit.util.locations import RUNTIMES_DIR

MANIFEST = "manifest.json"
FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a file of an entry: a plain name, never a path
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ConversionFailed(Exception):
    """The exporter or converter refused this backbone; the message says why in one line."""


def model_key(identity: Mapping[str, Any]) -> str:
    """The folder name of a converted model: a digest of everything that makes it what it is."""
    return json_sha256({"format": FORMAT, **identity})[:32]


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


@dataclass(frozen=True)
class StoredModel:
    """A verified converted model on disk: its main file and what the manifest says about it."""

    folder: Path
    main: Path | None  # None: a stored verdict that this conversion is rejected (manifest["rejected"] says why)
    manifest: dict[str, Any]
    kept: bool = True  # False: converted for this run only (the store could not be written), no file left


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, target: Path) -> None:
    """``model`` as ONNX at ``target`` with a dynamic batch dimension, through the dynamo exporter."""
    with warnings.catch_warnings(), redirect_stdout(StringIO()), redirect_stderr(StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: _batch_dim()},), input_names=["images"], output_names=["features"],
            optimize=True, verbose=False,
        )
        if program is None:
            raise ConversionFailed("torch.onnx.export returned no program")
        program.save(str(target), external_data=False)


def convert_openvino(model: torch.nn.Module, example: torch.Tensor, target: Path) -> None:
    """``model`` as OpenVINO IR (``.xml`` + ``.bin``) at ``target``, batch dynamic, weights kept in f32."""
    import openvino as ov

    with warnings.catch_warnings(), redirect_stdout(StringIO()), redirect_stderr(StringIO()):
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example, input=[ov.PartialShape([-1, *example.shape[1:]])])
        # save_model compresses weights to f16 by default: that alone would break fp32 agreement.
        ov.save_model(converted, str(target), compress_to_fp16=False)


def quantize_onnx(source: Path, target: Path, calibration: torch.Tensor, batch_size: int = 8) -> None:
    """Post-training static int8 quantisation of ``source`` (QDQ, per-channel weights) on ``calibration`` images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(calibration.split(batch_size))

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.contiguous().numpy()}

    with warnings.catch_warnings(), redirect_stdout(StringIO()), redirect_stderr(StringIO()):
        warnings.simplefilter("ignore")
        quantize_static(
            str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )


def build_files(runtime: str, precision: str, model: torch.nn.Module, example: torch.Tensor, folder: Path, calibration: torch.Tensor | None) -> Path:
    """Write the converted model for ``runtime``/``precision`` into ``folder``; returns its main file."""
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConversionFailed("int8 needs calibration images")
        export_onnx(model, example, folder / "fp32.onnx")
        quantize_onnx(folder / "fp32.onnx", folder / "model.onnx", calibration)
        (folder / "fp32.onnx").unlink()
        return folder / "model.onnx"
    if runtime == "onnxruntime":
        export_onnx(model, example, folder / "model.onnx")
        return folder / "model.onnx"
    convert_openvino(model, example, folder / "model.xml")
    return folder / "model.xml"


class ForeignEntry(ValueError):
    """A stored entry made for another identity than its key's (copied or linked over it): never used."""


class StoreUnwritable(Exception):
    """The store's folder cannot be written (read-only, no permission, no space); the message is one line."""


class TransientFailure(Exception):
    """Converting failed for a reason of the moment (disk full, I/O error, no memory): never stored as a verdict."""


def transient(exc: BaseException) -> BaseException | None:
    """The ``OSError`` or ``MemoryError`` in ``exc``'s chain, if any: then the disk or the machine failed, not the model."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (OSError, MemoryError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _regular(path: Path) -> bool:
    """A regular file, not followed through a link (a link, FIFO or device in the store is never read)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest as a typed record, or ``None`` when absent; ``ValueError`` (one clause) when it is not one."""
    path = folder / MANIFEST
    if not os.path.lexists(path):
        return None
    if not _regular(path):
        raise ValueError(f"{MANIFEST} is not a regular file")
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(raw) if len(raw) <= MAX_MANIFEST_BYTES else None
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable manifest ({_one_line(exc)})") from None
    if not isinstance(manifest, dict):
        raise ValueError("unreadable manifest (not a JSON object under 1 MiB)")
    files, main, identity = manifest.get("files"), manifest.get("main"), manifest.get("identity")
    if not isinstance(files, dict) or not all(
        isinstance(n, str) and _NAME.fullmatch(n) and n != MANIFEST and isinstance(d, str) and _HEX64.fullmatch(d) for n, d in files.items()
    ):
        raise ValueError("unreadable manifest (its file list is not plain names with sha256 digests)")
    if not isinstance(identity, dict) or (main is not None and main not in files):
        raise ValueError("unreadable manifest (no identity, or a main file it does not list)")
    return manifest


def _describe(identity: Mapping[str, Any]) -> str:
    weights = str(identity.get("weights_sha256", "?"))[:12]
    return f"backbone {str(identity.get('backbone', '?'))[:60]!r}, weights sha256 {weights}..., {identity.get('runtime', '?')} {identity.get('precision', '?')}"


class ModelStore:
    """Converted models under ``root/runtimes/``, one folder per key, verified on load.

    An entry holds the identity it was made for (``manifest["identity"]``: backbone, options, weights
    digest, runtime, precision, versions, input size) and the sha256 of each file. :meth:`load` uses it
    only when that identity is the one asked for (so its digest is the folder's key) and every file
    matches: an entry copied or linked over another key, or damaged, is refused (``ValueError``) and
    rebuilt by the caller. Links inside the store (the entry's folder, its files) are never followed.
    """

    def __init__(self, root: Path) -> None:
        self.base = root / RUNTIMES_DIR

    def folder(self, key: str) -> Path:
        return self.base / key

    def load(self, key: str, identity: Mapping[str, Any] | None = None) -> StoredModel | None:
        """The stored model for ``key`` (made for ``identity`` when given), ``None`` when absent; ``ValueError`` when not usable."""
        folder = self.folder(key)
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"unreadable ({_one_line(exc)})") from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise ForeignEntry("is a link or not a folder and not used (links in the store are never followed)")
        manifest = _read_manifest(folder)
        if manifest is None:
            return None
        recorded = manifest["identity"]
        if model_key(recorded) != key or (identity is not None and json_sha256(dict(identity)) != json_sha256(recorded)):
            raise ForeignEntry(f"was made for another model ({_describe(recorded)}) and not used")
        for name, expected in manifest["files"].items():
            path = folder / name
            if not _regular(path):
                raise ValueError(f"{name} is missing or not a regular file")
            if file_sha256(path) != expected:
                raise ValueError(f"{name} does not match its recorded sha256")
        with contextlib.suppress(OSError):
            os.utime(folder)  # "last used", for `tlkit cache clear --older-than` (a read-only store keeps its times)
        main = manifest.get("main")
        return StoredModel(folder, folder / str(main) if main else None, manifest)

    def _staging(self) -> Path:
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            tmp = self.base / f".tmp-{uuid.uuid4().hex}"
            tmp.mkdir()
        except OSError as exc:
            raise StoreUnwritable(f"the model store {self.base} cannot be written ({exc.strerror or _one_line(exc)})") from exc
        return tmp

    def save(self, key: str, build: Callable[[Path], tuple[Path | None, Mapping[str, Any]]], record: Mapping[str, Any]) -> StoredModel:
        """Build a model with ``build(tmp_folder) -> (main file, facts)`` and move it into place atomically.

        ``record`` (``{"identity": ...}``) and ``facts`` (agreement, or why the model was rejected) are
        stored in the manifest beside each file's sha256 and the seconds ``build`` took. A main file of
        ``None`` stores a verdict alone (a rejected conversion), so later runs do not pay for it again;
        ``build`` raises instead for anything that is not a verdict. A previous (damaged or foreign)
        folder, or a link, at the key is replaced. :class:`StoreUnwritable` when the store cannot be
        written at all (nothing was built).
        """
        tmp = self._staging()
        try:
            main, manifest = _build_into(tmp, build, record)
            final = self.folder(key)
            if final.is_symlink():
                final.unlink()  # a link at the key is replaced, never written through
            publish_folder(tmp, final)  # a previous (damaged) folder for the key is replaced
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StoredModel(final, final / main.name if main else None, manifest)

    def remove(self, key: str) -> None:
        shutil.rmtree(self.folder(key), ignore_errors=True)

    def entries(self) -> list[StoreEntry]:
        """Every entry (and leftover: a link, a temporary folder), as ``tlkit cache info`` and ``clear`` see it; nothing is followed."""
        try:
            folders = sorted(self.base.iterdir())
        except OSError:
            return []
        found = []
        for folder in folders:
            try:
                info = os.lstat(folder)
            except OSError:
                continue
            identity: dict[str, Any] = {}
            size = info.st_size
            if stat.S_ISDIR(info.st_mode):
                with contextlib.suppress(OSError, ValueError):
                    identity = (_read_manifest(folder) or {}).get("identity", {})
                with contextlib.suppress(OSError):
                    size = sum(os.lstat(p).st_size for p in folder.iterdir())
            found.append(StoreEntry(folder, identity, size, info.st_mtime, leftover=folder.name.startswith(".") or not stat.S_ISDIR(info.st_mode)))
        return found

    def discard(self, entry: StoreEntry) -> None:
        """Remove one entry (a link is removed itself, never what it points to)."""
        if entry.folder.is_symlink() or not entry.folder.is_dir():
            entry.folder.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry.folder, ignore_errors=True)


@dataclass(frozen=True)
class StoreEntry:
    """One folder of the store as listed (not verified): its identity as recorded, its size, when it was last used."""

    folder: Path
    identity: Mapping[str, Any]
    bytes: int
    last_used: float
    leftover: bool = False  # a temporary folder of an unfinished conversion, or something that is no entry (a link)


def _build_into(
    folder: Path, build: Callable[[Path], tuple[Path | None, Mapping[str, Any]]], record: Mapping[str, Any]
) -> tuple[Path | None, dict[str, Any]]:
    """Run ``build`` in ``folder`` and write its manifest there (atomically); returns (main file, manifest)."""
    start = time.perf_counter()
    main, facts = build(folder)
    if main is None:
        for leftover in folder.iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    manifest = {
        **record, **facts, "main": main.name if main else None, "files": files,
        "conversion_s": round(time.perf_counter() - start, 3), "created": time.time(),
    }
    write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
    return main, manifest


def build_private(build: Callable[[Path], tuple[Path | None, Mapping[str, Any]]], record: Mapping[str, Any]) -> StoredModel:
    """:meth:`ModelStore.save` for a store that cannot be written: built in a private temporary folder, deleted at once.

    The caller must have loaded the model (a session holds what it needs) inside ``build``; the
    returned record's folder no longer exists.
    """
    with tempfile.TemporaryDirectory(prefix="tlkit-convert-") as tmp:
        main, manifest = _build_into(Path(tmp), build, record)
    return StoredModel(Path(tmp), Path(tmp) / main.name if main else None, manifest, kept=False)


def convert_files(runtime: str, precision: str, model: torch.nn.Module, example: torch.Tensor, folder: Path, calibration: torch.Tensor | None) -> Path:
    """:func:`build_files`, with any exporter or converter failure as :class:`ConversionFailed` (one line)."""
    try:
        return build_files(runtime, precision, model, example, folder, calibration)
    except ConversionFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - exporters raise anything (torch._dynamo, onnxscript, openvino errors)
        cause = transient(exc)
        if cause is not None:  # the disk or the machine failed, not the model: never a verdict
            raise TransientFailure(_one_line(cause)) from exc
        raise ConversionFailed(_one_line(exc)) from exc
