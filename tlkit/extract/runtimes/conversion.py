"""Convert a frozen backbone for ONNX Runtime or OpenVINO, once, and keep the result on disk.

Conversion costs seconds to minutes, so a converted model is stored under tlkit's cache
(``<cache>/runtimes/<key>/``) and reused by every later run with the same key: the backbone, its
options, the digest of its actual parameters (:func:`tlkit.util.hashing.weights_digest`), the runtime, the precision, the runtime's and torch's
versions and the input size. A folder is built under a temporary name and renamed into place, so a
crash never leaves a half-written model where a run would find it, and ``manifest.json`` records the
sha256 of every file: a damaged model is detected on load and rebuilt, never used.

ONNX goes through torch's current exporter (``torch.onnx.export(..., dynamo=True)``), OpenVINO through
``openvino.convert_model(model, example_input=...)`` (no ONNX step). Both keep the batch dimension
dynamic. int8 is post-training static quantisation of the ONNX model (ONNX Runtime's
``quantize_static``, QDQ format) calibrated on images the caller supplies; OpenVINO reads the same
quantised ONNX file and runs it in int8.
"""

from __future__ import annotations

import json
import shutil
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

from tlkit.util.atomic import publish_folder
from tlkit.util.hashing import file_sha256, json_sha256

MANIFEST = "manifest.json"
RUNTIMES_DIR = "runtimes"
FORMAT = 1


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


class ModelStore:
    """Converted models under ``root/runtimes/``, one folder per key, verified by sha256 on load."""

    def __init__(self, root: Path) -> None:
        self.base = root / RUNTIMES_DIR

    def folder(self, key: str) -> Path:
        return self.base / key

    def load(self, key: str) -> StoredModel | None:
        """The stored model for ``key``, or ``None`` when absent; raises ``ValueError`` when damaged."""
        folder = self.folder(key)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            files: dict[str, str] = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"unreadable manifest ({_one_line(exc)})") from None
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                raise ValueError(f"{name} is missing")
            if file_sha256(path) != expected:
                raise ValueError(f"{name} does not match its recorded sha256")
        main = manifest.get("main")
        return StoredModel(folder, folder / str(main) if main else None, manifest)

    def save(self, key: str, build: Callable[[Path], tuple[Path | None, Mapping[str, Any]]], record: Mapping[str, Any]) -> StoredModel:
        """Build a model with ``build(tmp_folder) -> (main file, facts)`` and move it into place atomically.

        ``record`` (the identity) and ``facts`` (agreement, or why the model was rejected) are stored in
        the manifest beside each file's sha256 and the seconds ``build`` took. A main file of ``None``
        stores a verdict alone (a rejected conversion), so later runs do not pay for it again. A
        previous (damaged) folder for the key is replaced.
        """
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = self.base / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            start = time.perf_counter()
            main, facts = build(tmp)
            if main is None:
                for leftover in tmp.iterdir():
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {
                **record, **facts, "main": main.name if main else None, "files": files,
                "conversion_s": round(time.perf_counter() - start, 3), "created": time.time(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            final = self.folder(key)
            publish_folder(tmp, final)  # a previous (damaged) folder for the key is replaced
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StoredModel(final, final / main.name if main else None, manifest)

    def remove(self, key: str) -> None:
        shutil.rmtree(self.folder(key), ignore_errors=True)


def convert_files(runtime: str, precision: str, model: torch.nn.Module, example: torch.Tensor, folder: Path, calibration: torch.Tensor | None) -> Path:
    """:func:`build_files`, with any exporter or converter failure as :class:`ConversionFailed` (one line)."""
    try:
        return build_files(runtime, precision, model, example, folder, calibration)
    except ConversionFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - exporters raise anything (torch._dynamo, onnxscript, openvino errors)
        raise ConversionFailed(_one_line(exc)) from exc
