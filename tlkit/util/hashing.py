"""sha256 of files, remembered (tlkit's one memo of file hashes), of JSON records, and of a model's weights.

Weights files (hundreds of MB) and image files (thousands) are both identified by the sha256 of
their bytes. Reading a file again is only needed when it may have changed, so a hash is remembered
under the file's *stamp*: its resolved path, size, mtime and ctime (any write changes the ctime,
even when a tool restores the mtime). This module keeps that memo for the process; the feature
cache's file-hash index (:class:`tlkit.extract.cache.FileHashes`) persists the same stamps across runs and
asks this memo on a miss, so no file is read twice in one process whoever asks.

Weights that exist only in memory (fine-tuned, or about to be converted for another runtime) are
identified by :func:`weights_digest`, the one way tlkit hashes a model's tensors. This module does not
import torch: :func:`weights_digest` imports it when called.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Stamp = tuple[str, int, int, int]

_MEMO: dict[Stamp, str] = {}


def file_sha256(path: Path | str) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (no memo)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(data: Any) -> str:
    """sha256 of ``data`` as canonical JSON (sorted keys, no spaces, ``str()`` for what JSON lacks).

    The one way tlkit names or checks a record by its content: cache entries, converted models,
    the file-hash index, the listing index.
    """
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def stamp(path: Path | str) -> Stamp:
    """(resolved path, size, mtime_ns, ctime_ns); ``OSError`` when the file cannot be stat'ed."""
    resolved = os.path.realpath(path)
    info = os.stat(resolved)
    return (resolved, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def sha256_of(path: Path | str, file_stamp: Stamp | None = None) -> str:
    """:func:`file_sha256`, read only when this process has not hashed the file at this stamp."""
    key = file_stamp or stamp(path)
    if key not in _MEMO:
        _MEMO[key] = file_sha256(key[0])
    return _MEMO[key]


def weights_digest(weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """The hex sha256 of a model's weights: every parameter and buffer's name, shape, dtype and bytes, in name order.

    The one digest of weights in memory: the ``weights_id`` of fine-tuned weights (and so their
    feature-cache key and ``model.json``'s ``backbone.weights_sha256``) and the identity of a model
    converted for another runtime. The same tensors give the same digest whatever holds them (a
    module, its ``state_dict``, tensors read back from ``backbone.safetensors``), on any device and
    in any memory layout; it differs from the sha256 of a weights *file*, which also hashes the
    file's format (:func:`file_sha256` is used for those).
    """
    import torch

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
