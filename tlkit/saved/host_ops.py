"""Find the operation that makes a module unexportable: a tensor turned into a Python value in ``forward``.

``.item()``, ``.numpy()``, ``.tolist()``, ``float(t)`` or ``if t > 0:`` hand a tensor's *value* to
Python. Tracing bakes that value in as a constant (a TorchScript trace then "verifies" on inputs like
the ones it saw and is wrong on others), and ``torch.export``/ONNX stop with a traceback a thousand
lines long. Running ``forward`` once under a :class:`~torch.overrides.TorchFunctionMode` sees every
such call, so the author gets one line naming the operation and where it is, before any exporter runs.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Tensor method -> how it reads in a message. Each hands a tensor's value (not its shape) to Python.
HOST_OPS: dict[str, str] = {
    "item": ".item()",
    "numpy": ".numpy()",
    "tolist": ".tolist()",
    "__bool__": "bool(tensor) (an `if`/`and`/`or` on a tensor's value)",
    "__float__": "float(tensor)",
    "__int__": "int(tensor)",
    "__index__": "a tensor used as a Python index",
    "__array__": "numpy.asarray(tensor)",
}

_TORCH_ROOT = str(Path(torch.__file__).parent)


@dataclass(frozen=True)
class HostOp:
    """The first host operation a ``forward`` made: which, and the line of the caller's code that made it."""

    op: str
    where: str

    def describe(self) -> str:
        return f"{HOST_OPS[self.op]} at {self.where}" if self.where else HOST_OPS[self.op]


def _caller() -> str:
    """``file.py:line in function`` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_TORCH_ROOT) or frame.filename == __file__:
            continue
        return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
    return ""


class _Watch(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: HostOp | None = None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_OPS and self.found is None:
            self.found = HostOp(op=name, where=_caller())
        return func(*args, **(kwargs or {}))


def first_host_op(call: Callable[[], Any]) -> HostOp | None:
    """Run ``call`` (a module's forward on an example) once and return its first host operation, if any."""
    watch = _Watch()
    with torch.no_grad(), watch:
        call()
    return watch.found


def host_op_problem(what: str, module: torch.nn.Module, example: torch.Tensor) -> str | None:
    """One line saying which operation keeps ``what`` (``"head 'x'"``) from exporting, or None."""
    found = first_host_op(lambda: module.eval()(example))
    if found is None:
        return None
    return (
        f"{what} cannot be exported: its forward calls {found.describe()}, which turns a tensor into a Python "
        "value that a traced or exported graph cannot follow; keep it a tensor operation (docs/plugins.md, register_heads)"
    )
