"""Export a saved run as one file (backbone + head + softmax) for use outside tlkit.

The exported model takes a normalised image batch ``images`` (N, 3, H, W), preprocessed as
``model.json`` says, and returns ``probabilities`` (N, C); the batch size is free. Class names and
preprocessing travel inside the file (ONNX metadata, TorchScript extra files). Every export is
checked before it is kept: the written file is loaded back (ONNX with onnxruntime) and run on a
batch, and it must reproduce tlkit's own probabilities within ``TOLERANCE``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tlkit.atomic import atomic_path
from tlkit.errors import ExportError
from tlkit.model import SavedModel

Format = Literal["onnx", "torchscript"]
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4
OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_difference: float


def _metadata(model: SavedModel) -> dict[str, str]:
    return {
        "classes": json.dumps(model.classes),
        "preprocessing": json.dumps(model.preprocessing.to_dict()),
        "pipeline": json.dumps(model.pipeline.to_dict()),
        "backbone": str(model.info.get("backbone")),
        "head": str(model.info.get("head")),
        "input": "images: float32 (N, 3, H, W), resized, centre-cropped, scaled to [0, 1] and normalised as 'preprocessing' says",
        "output": "probabilities: float32 (N, C), classes in the order of 'classes'",
    }


def _check_batch(model: SavedModel, n: int = 3) -> torch.Tensor:
    size = model.preprocessing.crop_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _write_torchscript(classifier: torch.nn.Module, example: torch.Tensor, target: Path, metadata: dict[str, str]) -> torch.Tensor:
    # TorchScript is deprecated upstream in favour of torch.export, but it is still the format that
    # C++ (libtorch) and older deployments load; the user asked for it, so its warnings stay quiet.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(classifier, example, check_trace=False)
        extra = {f"{key}.txt": value for key, value in metadata.items()}
        torch.jit.save(traced, str(target), _extra_files=extra)
        reloaded = torch.jit.load(str(target), map_location="cpu")
        return reloaded(_batch_of(example, 3))


def _write_onnx(classifier: torch.nn.Module, example: torch.Tensor, target: Path, metadata: dict[str, str]) -> torch.Tensor:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): pip install 'tlkit[export]'") from None
    with torch.no_grad():
        torch.onnx.export(  # torch.export-based exporter (onnxscript); the TorchScript-based one is deprecated
            classifier,
            (example,),
            str(target),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(target))
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (output,) = session.run(["probabilities"], {"images": _batch_of(example, 3).numpy()})
    return torch.from_numpy(output)


def _batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
    """A batch of another size than the traced one, to prove the batch axis is free."""
    return torch.cat([example, example.flip(0)])[:n].contiguous()


def default_path(model: SavedModel, fmt: Format) -> Path:
    return model.run_dir / f"model{SUFFIXES[fmt]}"


def export(model: SavedModel, fmt: Format, out: Path | None = None) -> ExportResult:
    """Write ``model`` as ``fmt`` to ``out`` (default ``RUN_DIR/model.onnx`` or ``model.pt``) and verify it."""
    if fmt not in SUFFIXES:
        raise ExportError(f"unknown export format '{fmt}'; choose onnx or torchscript")
    target = Path(out) if out is not None else default_path(model, fmt)
    if target.is_dir():
        raise ExportError(f"--out {target} is a folder; give a file name such as {target / ('model' + SUFFIXES[fmt])}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write {target} ({exc.strerror})") from None
    classifier = model.classifier().cpu().float().to(memory_format=torch.contiguous_format)
    example = _check_batch(model, 2)
    with atomic_path(target) as tmp:
        writer = _write_onnx if fmt == "onnx" else _write_torchscript
        exported = writer(classifier, example, tmp, _metadata(model))
        with torch.no_grad():
            expected = classifier(_batch_of(example, 3))
        difference = float((exported - expected).abs().max())
        if not difference <= TOLERANCE:
            raise ExportError(f"the {fmt} export differs from tlkit's probabilities by {difference:.2e} (> {TOLERANCE:g}); not written")
    return ExportResult(path=target, format=fmt, max_difference=difference)
