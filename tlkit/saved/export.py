"""Export a saved run as one file (normalisation + backbone + head + softmax) for use outside tlkit.

The exported model takes ``images``: float32 (N, 3, H, W) in [0, 1], i.e. the image resized
(shorter side to ``resize_size``), centre-cropped to ``crop_size`` and divided by 255, and returns
``probabilities`` (N, C); the batch size is free. The mean/std normalisation is inside the graph,
so a caller needs nothing but an image library and the metadata: ``classes`` (a JSON list) and
``preprocessing`` (a JSON object: resize and crop sizes, interpolation), stored as ONNX metadata
props, TorchScript extra files and ``torch.export`` extra files (``classes.json``,
``preprocessing.json``). Three formats:

- ``onnx`` (``.onnx``): ONNX Runtime, OpenVINO, TensorRT, browsers; written by the
  ``torch.export``-based exporter.
- ``pt2`` (``.pt2``): ``torch.export``'s ExportedProgram, what current PyTorch recommends
  (``torch.export.load(path).module()``).
- ``torchscript`` (``.pt``): deprecated in current PyTorch in favour of ``torch.export``, kept
  because C++ (libtorch) deployments still load it.

Every export is checked before it is kept: the written file is loaded back and run on a batch of
another size, and it must reproduce tlkit's own probabilities within ``TOLERANCE``.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tlkit.errors import ExportError
from tlkit.saved.host_ops import host_op_problem
from tlkit.saved.reader import SavedModel
from tlkit.util.atomic import atomic_path, temporary_name
from tlkit.util.install_hint import install_hint

Format = Literal["onnx", "pt2", "torchscript"]
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
TOLERANCE = 1e-4
OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    max_difference: float


class NormalisedClassifier(torch.nn.Module):
    """Images in [0, 1] -> ``(x - mean) / std`` -> backbone -> head -> softmax: the exported graph."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, classifier: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier((images - self.mean) / self.std)


def metadata(model: SavedModel) -> dict[str, str]:
    """What travels with an export; every value a JSON document or a plain sentence."""
    pre = model.preprocessing.to_dict()
    return {
        "classes": json.dumps(model.classes),
        "preprocessing": json.dumps({**pre, "normalisation": "inside the model: give it images scaled to [0, 1]"}),
        "pipeline": json.dumps(model.pipeline.to_dict()),
        "backbone": model.manifest.backbone.name,
        "head": model.manifest.head.name,
        "input": "images: float32 (N, 3, H, W) in [0, 1]: resized (shorter side to resize_size), centre-cropped to crop_size, divided by 255",
        "output": "probabilities: float32 (N, C), classes in the order of 'classes'",
    }


def _extra_files(meta: dict[str, str]) -> dict[str, str]:
    """Metadata as files: the JSON values as ``<key>.json``, the sentences as ``<key>.txt``."""
    return {f"{key}.json" if key in ("classes", "preprocessing") else f"{key}.txt": value for key, value in meta.items()}


def _check_batch(model: SavedModel, n: int = 3) -> torch.Tensor:
    size = model.preprocessing.crop_size
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _write_torchscript(classifier: torch.nn.Module, example: torch.Tensor, target: Path, meta: dict[str, str]) -> torch.Tensor:
    # TorchScript is deprecated upstream in favour of torch.export (the pt2 format), but it is still
    # the format C++ (libtorch) and older deployments load; asked for by name, so its warnings stay quiet.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(classifier, example, check_trace=False)
        torch.jit.save(traced, str(target), _extra_files=_extra_files(meta))
        reloaded = torch.jit.load(str(target), map_location="cpu")
        return reloaded(_batch_of(example, 3))


def _write_pt2(classifier: torch.nn.Module, example: torch.Tensor, target: Path, meta: dict[str, str]) -> torch.Tensor:
    with torch.no_grad():
        program = torch.export.export(classifier, (example,), dynamic_shapes=_batch_axis())
    buffer = io.BytesIO()  # torch's zip writer aborts the process (SIGABRT) when a disk write fails inside it:
    torch.export.save(program, buffer, extra_files=_extra_files(meta))  # build the file in memory, then
    target.write_bytes(buffer.getbuffer())  # write it from Python, where a full disk is an OSError (one line)
    with target.open("rb") as fh:
        reloaded = torch.export.load(fh).module()
    with torch.no_grad():
        return reloaded(_batch_of(example, 3))


def _write_onnx(classifier: torch.nn.Module, example: torch.Tensor, target: Path, meta: dict[str, str]) -> torch.Tensor:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): {install_hint('export')}") from None
    with torch.no_grad():
        torch.onnx.export(  # torch.export-based exporter (onnxscript); the TorchScript-based one is deprecated
            classifier,
            (example,),
            str(target),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes=_batch_axis(),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(target))
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(target))
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (output,) = session.run(["probabilities"], {"images": _batch_of(example, 3).numpy()})
    return torch.from_numpy(output)


def _batch_axis() -> tuple[dict[int, object]]:
    """The first input's batch axis is free (given by position, so any ``forward`` argument name works)."""
    return ({0: torch.export.Dim("batch", min=1)},)


def _batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
    """A batch of another size than the traced one, to prove the batch axis is free."""
    return torch.cat([example, example.flip(0)])[:n].contiguous()


MIN_FREE_BYTES = 16 * 2**20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:160]


def _check_writable(target: Path, model: SavedModel) -> None:
    """Refuse before any work a place that cannot take the export: not creatable, not writable, or too full.

    A file is created and removed beside ``target`` (the only sure test: permissions, read-only file
    systems, ``/proc``), and the free space must hold the weights with room to spare (a writer that
    meets a full disk in C++ may abort the process instead of raising).
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(target)
        probe.open("xb").close()
        probe.unlink()
        free = shutil.disk_usage(target.parent).free
    except OSError as exc:
        raise ExportError(f"cannot write {target} ({exc.strerror or exc}); choose another --out") from None
    weights = sum(t.numel() * t.element_size() for t in model.classifier().state_dict().values())
    if free < weights + MIN_FREE_BYTES:
        raise ExportError(f"cannot write {target}: {free / 2**20:.0f} MiB free, the export needs about {(weights + MIN_FREE_BYTES) / 2**20:.0f} MiB; free some space or choose another --out")


def _check_host_ops(model: SavedModel, classifier: NormalisedClassifier, example: torch.Tensor) -> None:
    """Refuse, in one line naming the operation, a backbone or head whose forward hands a tensor's value to Python.

    Checked before any exporter runs: ONNX would fail in a thousand-line traceback, and a TorchScript
    trace would bake the value in and still reproduce the probabilities on the check batch.
    """
    images = (example - classifier.mean) / classifier.std
    with torch.no_grad():
        features = model.backbone.eval()(images).float().flatten(1)
    manifest = model.manifest
    for what, module, inputs in ((f"backbone '{manifest.backbone.name}'", model.backbone, images), (f"head '{manifest.head.name}'", model.head, features)):
        problem = host_op_problem(what, module, inputs)
        if problem:
            raise ExportError(f"{problem}; nothing written")


def round_trip(module: torch.nn.Module, example: torch.Tensor, fmt: Format, folder: Path) -> torch.Tensor:
    """Export ``module`` (batch axis free) as ``fmt`` into ``folder``, load it back and run it on a batch of another size.

    The outputs are for :func:`batch_of` ``(example, 3)``; the plugin kit compares them with eager.
    """
    writer = {"onnx": _write_onnx, "pt2": _write_pt2, "torchscript": _write_torchscript}[fmt]
    return writer(module.eval(), example, folder / f"check{SUFFIXES[fmt]}", {"classes": "[]", "preprocessing": "{}"})


def batch_of(example: torch.Tensor, n: int) -> torch.Tensor:
    """The batch an export is checked on (``example`` and its reverse, cut to ``n`` rows)."""
    return _batch_of(example, n)


def default_path(model: SavedModel, fmt: Format) -> Path:
    return model.run_dir / f"model{SUFFIXES[fmt]}"


def export(model: SavedModel, fmt: Format, out: Path | None = None) -> ExportResult:
    """Write ``model`` as ``fmt`` to ``out`` (default ``RUN_DIR/model.onnx``, ``.pt2`` or ``.pt``) and verify it."""
    if fmt not in SUFFIXES:
        raise ExportError(f"unknown export format '{fmt}'; choose onnx, pt2 or torchscript")
    target = Path(out) if out is not None else default_path(model, fmt)
    if target.is_dir():
        raise ExportError(f"--out {target} is a folder; give a file name such as {target / ('model' + SUFFIXES[fmt])}")
    _check_writable(target, model)
    pre = model.preprocessing
    backbone_and_head = model.classifier().cpu().float().to(memory_format=torch.contiguous_format)
    classifier = NormalisedClassifier(backbone_and_head, pre.mean, pre.std).eval()
    for parameter in classifier.parameters():  # an inference model: a loaded .pt2 then returns plain tensors, not ones asking for gradients
        parameter.requires_grad_(False)
    example = _check_batch(model, 2)
    _check_host_ops(model, classifier, example)
    with atomic_path(target) as tmp:
        writer = {"onnx": _write_onnx, "pt2": _write_pt2, "torchscript": _write_torchscript}[fmt]
        try:
            exported = writer(classifier, example, tmp, metadata(model))
        except OSError as exc:  # a full disk, a quota: nothing is kept (atomic_path removes the temporary file)
            raise ExportError(f"cannot write {target} ({exc.strerror or exc}); free some space or choose another --out") from None
        except RuntimeError as exc:  # torch's writers report a failed open or write as RuntimeError
            if "open file failed" not in str(exc) and "write" not in str(exc).lower():
                raise
            raise ExportError(f"cannot write {target} ({_first_line(exc)}); choose another --out") from None
        with torch.no_grad():
            expected = classifier(_batch_of(example, 3))
        difference = float((exported - expected).abs().max())
        if not difference <= TOLERANCE:
            raise ExportError(f"the {fmt} export differs from tlkit's probabilities by {difference:.2e} (> {TOLERANCE:g}); not written")
    return ExportResult(path=target, format=fmt, max_difference=difference)
