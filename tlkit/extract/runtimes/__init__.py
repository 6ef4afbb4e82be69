"""The runtime layer: which engine runs a frozen backbone's forward pass (torch, ONNX Runtime, OpenVINO).

:func:`choose_runtime` returns a :class:`Runtime`: a ``forward(batch) -> features`` callable the
extraction loop uses in place of the torch module, and a :class:`RuntimeChoice` record of what was
chosen (runtime, effective precision, agreement with eager fp32, conversion time, the one note).
"""

from tlkit.extract.features import torch_forward
from tlkit.extract.runtimes.choice import AGREEMENT, AUTO_ORDER, PRECISIONS, RUNTIMES, Runtime, RuntimeChoice, choose_runtime, effective_precision

__all__ = ["AGREEMENT", "AUTO_ORDER", "PRECISIONS", "RUNTIMES", "Runtime", "RuntimeChoice", "choose_runtime", "effective_precision", "torch_forward"]
