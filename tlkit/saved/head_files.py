"""A head on disk: its ``state_dict`` in ``head.safetensors``, its constructor settings in the metadata.

safetensors metadata is a flat ``str -> str`` map, so the head's ``config`` and ``choices`` are
stored as JSON strings under those keys (with ``head``, the registered name). Loading reads the
config back and calls the head's ``build(config)``, then loads the tensors strictly: the module is
rebuilt from what the head said about itself when it was trained, never guessed from tensor
shapes. A head that registers only ``load(tensors, options)`` is rebuilt that way instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from tlkit.contract.specs import HeadConfig, HeadSpec, PluginOptions, TrainedHead
from tlkit.errors import RunError
from tlkit.saved.run_directory import check_run_file

FORMAT = "1"  # bump when the meaning of the metadata keys changes


def head_metadata(name: str, trained: TrainedHead) -> dict[str, str]:
    """The metadata saved beside a trained head's tensors."""
    return {
        "head": name,
        "format": FORMAT,
        "config": json.dumps(dict(trained.config), allow_nan=False),
        "choices": json.dumps(dict(trained.choices), allow_nan=False),
    }


def head_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's ``state_dict`` as contiguous CPU tensors, ready for safetensors."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def read_head_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a saved head; a missing or unreadable file is a :class:`RunError`."""
    check_run_file(path)  # a regular file of a sane size: never a link to /dev/zero or a FIFO
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise RunError(f"{path} cannot be read as safetensors ({exc}); run the recipe again") from None
    return tensors, metadata


def _head_config(value: dict[str, Any] | None, path: Path) -> HeadConfig | None:
    """The saved ``config`` as the flat scalars ``HeadSpec.build`` is promised (see :data:`~tlkit.contract.specs.HeadConfig`)."""
    if value is None:
        return None
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise RunError(f"{path}: its 'config' metadata holds {key!r} = a {type(item).__name__}, not a number or string; run the recipe again")
    return value


def saved_json(metadata: Mapping[str, str], key: str, path: Path) -> dict[str, Any] | None:
    """``metadata[key]`` parsed as a JSON object, or None when the head was saved without it."""
    if key not in metadata:
        return None
    try:
        value = json.loads(metadata[key])
    except ValueError:
        raise RunError(f"{path}: its '{key}' metadata is not JSON; run the recipe again") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: its '{key}' metadata is not a JSON object; run the recipe again")
    return value


def build_head(spec: HeadSpec[PluginOptions], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], options: PluginOptions, path: Path) -> torch.nn.Module:
    """The saved head as a module in eval mode: ``build(config)`` + its tensors, or the head's ``load``."""
    config = _head_config(saved_json(metadata, "config", path), path)
    if spec.build is not None and config is not None:
        module = spec.build(config)
        module.load_state_dict(dict(tensors), strict=True)
        return module.eval()
    if spec.load is not None:
        return spec.load(tensors, options).eval()
    raise RunError(f"{path} was saved without the constructor settings head '{spec.name}' is rebuilt from (an older tlkit); run the recipe again")


def load_head(spec: HeadSpec[PluginOptions], path: Path, options: PluginOptions) -> torch.nn.Module:
    """Read ``path`` and rebuild head ``spec`` from it; a file that does not fit is a :class:`RunError`."""
    tensors, metadata = read_head_file(path)
    try:
        return build_head(spec, tensors, metadata, options, path)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{path} does not fit head '{spec.name}' of this tlkit ({reason}); run the recipe again") from None
