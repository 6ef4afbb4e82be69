"""Choose the runtime that runs a frozen backbone's forward pass, and say what was chosen and why.

``extract.runtime`` is ``auto``, ``torch``, ``onnxruntime`` or ``openvino``. A converted runtime is
used only when it is installed, converts this backbone, and agrees with eager PyTorch fp32 on a probe
batch of the run's own images (cosine per image >= :data:`AGREEMENT` for the precision). Anything
else falls back, to the next candidate for ``auto`` and finally to torch, and the run gets exactly
one note saying what ran and why: a fallback never crashes a run and is never silent.

Conversion and the agreement check are paid once: the converted model and its verdict (accepted with
its agreement figure, or rejected with the reason) are stored by :mod:`tlkit.extract.runtimes.conversion`,
so a second run loads the stored model (or falls back at once) without converting again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlkit.extract.features import torch_forward
from tlkit.extract.runtimes import sessions
from tlkit.extract.runtimes.conversion import (
    ConversionFailed,
    ForeignEntry,
    ModelStore,
    StoredModel,
    StoreUnwritable,
    TransientFailure,
    build_private,
    convert_files,
    model_key,
)
from tlkit.util.hashing import weights_digest

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")

# Lowest per-image cosine against eager fp32 features a runtime must reach at each precision. fp32 is a
# re-ordering of the same arithmetic (the bar); bf16 keeps 8 mantissa bits (measured >= 0.998
# on Lite0 and ResNet-18); int8 is an approximation whose accuracy cost the benchmark reports.
AGREEMENT = {"fp32": 0.99999, "bf16": 0.99, "fp16": 0.99, "int8": 0.95}

# Candidates for ``auto`` in order of measured speed on CPUs (benchmarks/README.md), per precision.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "fp32": ("openvino", "onnxruntime"),
    "bf16": ("openvino",),
    "fp16": ("openvino",),
    "int8": ("openvino", "onnxruntime"),
}
# What each converted runtime runs natively on a CPU.
SUPPORTED: dict[str, tuple[str, ...]] = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "fp16", "int8")}

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RuntimeChoice:
    """What runs the forward pass, at which precision, and what it cost to get there (for metrics.json)."""

    requested: str
    runtime: str
    precision: str
    version: str
    agreement: float | None = None  # lowest per-image cosine vs eager fp32 on the probe batch
    max_abs_diff: float | None = None
    conversion_s: float = 0.0  # paid in this run (0 when the stored model was reused)
    load_s: float = 0.0
    reused: bool = False
    model_path: str | None = None
    note: str = ""  # the one line the run shows: what runs and, for a fallback, why
    reason: str = ""  # why ``auto`` chose torch without trying a conversion (recorded, not shown)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Runtime:
    """A ``forward(batch) -> features`` callable the extraction loop uses in place of the module, and its record."""

    forward: Forward
    choice: RuntimeChoice


def fast_cpu_precision(precision: str) -> bool:
    """Whether this CPU computes ``precision`` natively (oneDNN's check: AVX-512-BF16/AMX for bf16, AVX-512-FP16/AMX for fp16)."""
    if precision in ("fp32", "int8"):
        return True
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    supported = getattr(torch.ops.mkldnn, check, None)
    return bool(supported is None or supported())


def effective_precision(precision: str, device: torch.device, insist: bool, fast: Callable[[str], bool] = fast_cpu_precision) -> tuple[str, str]:
    """The precision to run and, when it is not the one asked for, why (one clause).

    bf16/fp16 on a CPU without native support would be emulated, many times slower than fp32 (about
    10x measured for ResNet-18): fp32 runs instead unless ``insist``, and the run says so.
    """
    if device.type != "cpu" or fast(precision):
        return precision, ""
    if insist:
        return precision, f"this CPU has no fast {precision} path: {precision} is emulated, much slower than fp32 (as insisted)"
    return "fp32", f"this CPU has no fast {precision} path, so {precision} would be emulated: fp32 runs instead (extract.insist_precision: true emulates it)"


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    """(lowest per-image cosine, largest absolute difference) between two (N, D) feature batches."""
    reference, candidate = reference.double().flatten(1), candidate.double().flatten(1)
    if reference.shape != candidate.shape:
        return float("-inf"), float("inf")
    cosine = torch.nn.functional.cosine_similarity(reference, candidate, dim=1, eps=1e-12)
    return float(cosine.min()), float((reference - candidate).abs().max())


@dataclass
class _Request:
    model: torch.nn.Module
    identity: Mapping[str, Any]
    precision: str
    threads: int
    probe: Callable[[], torch.Tensor]
    calibration: Callable[[], torch.Tensor] | None
    store: ModelStore
    images: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    digest: str | None = None

    def probe_batch(self) -> torch.Tensor:
        """The probe images (decoded once, on first need) and, beside them, eager fp32's features of them."""
        if self.images is None:
            self.images = self.probe()
            self.reference = torch_forward(self.model, torch.device("cpu"), "fp32")(self.images)
        return self.images

    def weights(self) -> str:
        if self.digest is None:
            self.digest = weights_digest(self.model)
        return self.digest


def _key(request: _Request, runtime: str, shape: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    identity = {
        **request.identity, "weights_sha256": request.weights(), "runtime": runtime, "precision": request.precision,
        "runtime_version": sessions.version(runtime), "torch": torch.__version__, "input": list(shape),
    }
    return model_key(identity), identity


def _build(request: _Request, runtime: str, key: str, identity: dict[str, Any]) -> tuple[StoredModel, float, Forward | None, str]:
    """Convert, check agreement on the probe batch, and store the model or the verdict against it.

    Also returns the session the agreement check ran on (``None`` when rejected), so a model just
    built is not compiled a second time to run, and a note when the store could not be written (the
    model was then converted for this run only). A failure of the disk or the machine while
    converting raises :class:`TransientFailure`: only the exporter's or the agreement's verdict is stored.
    """
    probe = request.probe_batch()
    threshold = AGREEMENT[request.precision]
    checked: list[Forward] = []

    def build(folder: Path) -> tuple[Path | None, dict[str, Any]]:
        try:
            calibration = request.calibration() if request.precision == "int8" and request.calibration else None
            main = convert_files(runtime, request.precision, request.model, probe[:2], folder, calibration)
            forward = sessions.load(runtime, main, request.precision, request.threads)
            cosine, diff = agreement(request.reference, forward(probe))  # type: ignore[arg-type]
        except ConversionFailed as exc:
            return None, {"rejected": f"cannot convert this backbone ({exc})"}
        if not cosine >= threshold:
            return None, {"rejected": f"features disagree with eager fp32 (cosine {cosine:.6f} < {threshold})", "agreement": cosine}
        checked.append(forward)
        return main, {"agreement": cosine, "max_abs_diff": diff}

    start = time.perf_counter()
    note = ""
    try:
        stored = request.store.save(key, build, {"identity": identity})
    except StoreUnwritable as exc:
        stored, note = build_private(build, {"identity": identity}), f"{exc}: converted for this run only"
    return stored, time.perf_counter() - start, checked[0] if checked and stored.main is not None else None, note


def _stored(request: _Request, runtime: str, key: str, identity: dict[str, Any]) -> tuple[StoredModel, float, Forward | None, str]:
    """The verified stored model (or verdict) for ``key``, else one converted now; and a note on what was wrong or unwritable."""
    try:
        stored = request.store.load(key, identity)
    except ForeignEntry as exc:
        stored, damaged = None, f"stored model {key[:12]} {exc}"
    except ValueError as exc:
        stored, damaged = None, f"stored model was damaged ({exc})"
    else:
        damaged = ""
    if stored is not None:
        return stored, 0.0, None, ""
    try:
        stored, spent, built, unwritable = _build(request, runtime, key, identity)
    except (OSError, TransientFailure) as exc:
        raise TransientFailure("; ".join(filter(None, [damaged, f"converting failed ({exc}); not remembered, tried again next run"]))) from None
    rebuilt = f"{damaged}, {'converted again' if unwritable else 'rebuilt'}" if damaged else ""
    return stored, spent, built, "; ".join(filter(None, [rebuilt, unwritable]))


def _try(request: _Request, runtime: str, shape: tuple[int, ...]) -> tuple[Runtime | None, str]:
    """The runtime ready to run, or ``None`` and the reason it cannot (one short clause)."""
    if not sessions.installed(runtime):
        return None, f"{runtime} is not installed (pip install {runtime})"
    if request.precision not in SUPPORTED[runtime]:
        return None, f"{runtime} has no {request.precision} path on CPUs"
    if runtime == "openvino" and not sessions.openvino_precision_supported(request.precision):
        return None, f"this CPU has no native {request.precision} for openvino"
    key, identity = _key(request, runtime, shape)
    try:
        stored, spent, built, note = _stored(request, runtime, key, identity)
    except TransientFailure as exc:
        return None, f"{runtime}: {exc}"
    if stored.main is None:
        return None, f"{runtime}: {note + '; ' if note else ''}{stored.manifest.get('rejected', 'rejected')}"
    start = time.perf_counter()
    forward = built or sessions.load(runtime, stored.main, request.precision, request.threads)
    choice = RuntimeChoice(
        requested="", runtime=runtime, precision=request.precision, version=sessions.version(runtime),
        agreement=stored.manifest.get("agreement"), max_abs_diff=stored.manifest.get("max_abs_diff"),
        conversion_s=round(spent, 3), load_s=round(time.perf_counter() - start, 3), reused=spent == 0.0 and built is None,
        model_path=str(stored.main) if stored.kept else None, note=note,
    )
    return Runtime(forward, choice), ""


def choose_runtime(
    model: torch.nn.Module,
    *,
    requested: str,
    precision: str,
    device: torch.device,
    identity: Mapping[str, Any],
    input_shape: tuple[int, int, int],
    probe: Callable[[], torch.Tensor],
    cache_root: Path,
    calibration: Callable[[], torch.Tensor] | None = None,
    threads: int | None = None,
    insist_precision: bool = False,
    fast: Callable[[str], bool] = fast_cpu_precision,
) -> Runtime:
    """The runtime for this backbone and its record; ``model`` must already be eval, frozen, on ``device``.

    ``identity`` names the backbone (name, options); the weights are identified by hashing the
    model's own tensors. ``probe()`` returns a small batch of preprocessed images (the agreement
    check) and ``calibration()`` training images for int8; both are called only when a model is
    converted, never when a stored one is reused.
    """
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; choose one of {', '.join(RUNTIMES)}")
    reasons: list[str] = []
    precision, why = effective_precision(precision, device, insist_precision, fast)
    if why:
        reasons.append(why)
    candidates = AUTO_ORDER.get(precision, ()) if requested == "auto" else (() if requested == "torch" else (requested,))
    if device.type != "cpu" and candidates:
        reasons.append(f"on {device.type} torch runs the forward pass")
        candidates = ()
    request = _Request(model, identity, precision, threads or torch.get_num_threads(), probe, calibration, ModelStore(cache_root))
    for runtime in candidates:
        found, reason = _try(request, runtime, (1, *input_shape))
        if found is not None:
            return Runtime(found.forward, dataclasses.replace(found.choice, requested=requested, note=_success_note(found.choice, reasons)))
        reasons.append(reason)
    return _torch_runtime(model, requested, precision, device, reasons)


def _success_note(choice: RuntimeChoice, reasons: list[str]) -> str:
    how = f"stored model reused, loaded in {choice.load_s:.2f} s" if choice.reused else f"converted in {choice.conversion_s:.1f} s"
    facts = [how, f"cosine {choice.agreement:.6f} vs eager fp32" if choice.agreement is not None else "", choice.note, *reasons]
    return f"runtime: {choice.runtime} {choice.precision} ({'; '.join(f for f in facts if f)})"


def _torch_runtime(model: torch.nn.Module, requested: str, precision: str, device: torch.device, reasons: list[str]) -> Runtime:
    effective = precision
    if precision == "int8":
        effective = "fp32"
        reasons.append("torch has no int8 path here, so it runs fp32")
    note = ""
    if reasons:
        note = f"runtime: torch {effective} ({'; '.join(reasons)})"
    choice = RuntimeChoice(requested=requested, runtime="torch", precision=effective, version=torch.__version__, note=note)
    return Runtime(torch_forward(model, device, effective), choice)
