"""Where training runs and in which precision: ``finetune.device`` and ``finetune.precision`` resolved.

``auto`` picks CUDA, then Apple's MPS, then the CPU. Precision ``auto`` is fp32 on the CPU (measured on
this project's 2-core Xeon with AVX-512-BF16: a bf16-autocast training step of EfficientNet-Lite0
took 1.3x as long as fp32, see benchmarks/README.md), bf16 on a CUDA device that supports it and fp16 with
gradient scaling on one that does not. bf16 can still be chosen on the CPU; on a CPU without a fast
bf16 path it is refused with a note rather than silently emulated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tlkit.errors import RecipeError
from tlkit.extract.features import slow_precision_note

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_device(setting: str) -> torch.device:
    """``auto`` -> cuda / mps / cpu; an unavailable explicit choice is a one-line error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise RecipeError("'finetune.device' is cuda but no CUDA device is available; use auto or cpu")
    if setting == "mps" and not has_mps:
        raise RecipeError("'finetune.device' is mps but MPS is not available; use auto or cpu")
    return torch.device(setting)


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of training (``None``: fp32) and whether gradients are scaled (fp16 on CUDA)."""

    name: str
    dtype: torch.dtype | None
    scale_gradients: bool

    def autocast(self, device: torch.device) -> Any:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def training_precision(setting: str, device: torch.device) -> Precision:
    """Resolve ``finetune.precision`` for ``device``."""
    name = setting
    if setting == "auto":
        name = "fp32"
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name == "fp32":
        return Precision("fp32", None, False)
    if device.type == "cpu":
        note = slow_precision_note(device, name)
        if note:
            raise RecipeError(f"'finetune.precision': {note.replace('extract.precision', 'finetune.precision')}; use fp32")
    return Precision(name, _DTYPES[name], name == "fp16" and device.type == "cuda")


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (``None``: leave torch's setting), then restore it.

    On a machine whose cores are taken by other processes, threads that wait for each other at every
    operation stall: measured here with the load average at 13 on 2 cores, a training step of timm's
    small ``test_efficientnet`` took 0.12 s on 1 thread and 6-8 s on 2.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
