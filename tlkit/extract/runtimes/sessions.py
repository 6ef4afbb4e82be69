"""Load a converted model into its runtime and call it like the torch module it came from.

Each loader returns a ``forward(batch) -> features`` callable: a float32 (N, 3, H, W) tensor in, a
float32 (N, D) tensor out, on the CPU. Precision is always set explicitly: OpenVINO's default
inference precision differs by CPU (bf16 on AMX machines, f32 elsewhere), so a run that asked for
fp32 must say f32, or its features would silently depend on the machine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Forward = Callable[[torch.Tensor], torch.Tensor]

_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}


def installed(runtime: str) -> bool:
    """Whether ``runtime`` can be imported here (torch always can)."""
    if runtime == "torch":
        return True
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[runtime]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def version(runtime: str) -> str:
    """The runtime's version string (part of the converted-model key)."""
    if runtime == "torch":
        return torch.__version__
    if runtime == "onnxruntime":
        import onnxruntime

        return str(onnxruntime.__version__)
    import openvino

    return str(openvino.get_version())


def _as_numpy(batch: torch.Tensor) -> np.ndarray:
    # Runtimes want a dense NCHW array; a channels-last tensor would be copied by them anyway.
    return batch.detach().to("cpu", torch.float32).contiguous().numpy()


def onnxruntime_forward(path: Path, threads: int) -> Forward:
    """An ONNX Runtime CPU session on ``path`` with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(batch: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(None, {name: _as_numpy(batch)})
        return torch.from_numpy(out).flatten(1)

    return forward


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, never destroyed.

    OpenVINO's guidance is one Core per process; a Core freed while models it compiled are still alive
    (a local that went out of scope) leaves them to be torn down later, in whatever order the garbage
    collector picks.
    """
    import openvino as ov

    return ov.Core()


def openvino_precision_supported(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin runs ``precision`` natively here (bf16 needs AVX-512-BF16 or AMX)."""
    if precision in ("fp32", "int8"):
        return True
    capabilities = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {"bf16": "BF16", "fp16": "FP16"}[precision] in capabilities


def openvino_forward(path: Path, precision: str, threads: int) -> Forward:
    """An OpenVINO CPU model compiled from ``path`` with an explicit inference precision hint."""
    core = openvino_core()
    config = {
        "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",  # one batch at a time from the extraction loop
    }
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        out = request.infer({0: _as_numpy(batch)})[compiled.output(0)]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)).flatten(1)

    return forward


def load(runtime: str, path: Path, precision: str, threads: int) -> Forward:
    """The forward callable of a converted model stored at ``path``."""
    if runtime == "onnxruntime":
        return onnxruntime_forward(path, threads)
    if runtime == "openvino":
        return openvino_forward(path, precision, threads)
    raise ValueError(f"no converted models for runtime {runtime!r}")
