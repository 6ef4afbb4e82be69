"""Checkpoints of a fine-tuning run: everything needed to continue it as if it had never stopped.

A checkpoint is two files in the run's ``checkpoints/`` folder: ``epoch-NNNN.safetensors`` (every
tensor: the model's state, the best epoch's state when a held-out split chooses it, the optimiser's
buffers, torch's random state) and ``checkpoint.json`` (the rest: epoch, optimiser hyper-parameters,
scheduler step, Python's and numpy's random state, the history, the recipe it belongs to). Both are
written with :func:`tlkit.util.atomic.write_atomic`, the tensors first and the state file last: the state
file names its tensor file and that file's sha256, so a kill at any moment leaves the previous
checkpoint or the new one, never a mix. Older tensor files are deleted only after the new state file
is in place.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from tlkit.errors import OutputError, RunError
from tlkit.util.atomic import write_atomic

STATE_FILE = "checkpoint.json"
FORMAT = 1


@dataclass
class TrainingState:
    """Where training stands after ``epoch`` complete epochs (0 = not started)."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: tuple[float, float] | None = None  # (val accuracy, -val loss): higher is better
    best_state: dict[str, torch.Tensor] | None = None


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in plain["state"].items():
        state.setdefault(int(pid), {}).update(entries)
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    python = random.getstate()
    plain = {"python": [python[0], list(python[1]), python[2]], "numpy": [kind, int(pos), int(has_gauss), float(gauss)]}
    return tensors, plain


def _set_rng_state(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]) -> None:
    torch.random.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainingState,
    recipe: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the checkpoint after ``state.epoch`` epochs; returns the state file."""
    optim_tensors, optim_plain = _optimizer_parts(optimizer)
    rng_tensors, rng_plain = _rng_state()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    if state.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in state.best_state.items()})
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    name = f"epoch-{state.epoch:04d}.safetensors"
    info = {
        "format": FORMAT,
        "epoch": state.epoch,
        "tensors": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "optimizer": optim_plain,
        "scheduler": scheduler.state_dict(),
        "rng": rng_plain,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_score": list(state.best_score) if state.best_score else None,
        "recipe": dict(recipe),
        **dict(extra or {}),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / name, data)
        target = write_atomic(folder / STATE_FILE, (json.dumps(info, allow_nan=True) + "\n").encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write a checkpoint in {folder} ({exc.strerror or exc}); free some disk space") from None
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return target


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The state and tensors of the checkpoint in ``folder`` (``None`` when there is none); checks the sha256."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        data = (folder / info["tensors"]).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"checkpoint {path} cannot be read ({exc}); delete {folder} to start again") from None
    if info.get("format") != FORMAT or hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise RunError(f"checkpoint {path} does not match its tensor file {info.get('tensors')}; delete {folder} to start again")
    return info, load(data)


def restore(
    info: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainingState:
    """Put model, optimiser, scheduler and random state back as they were; returns the training state."""
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    optimizer.load_state_dict(_optimizer_state(tensors, info["optimizer"]))
    scheduler.load_state_dict(info["scheduler"])
    _set_rng_state(tensors, info["rng"])
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    score = info.get("best_score")
    return TrainingState(
        epoch=int(info["epoch"]),
        history=[dict(point) for point in info["history"]],
        best_epoch=int(info.get("best_epoch", 0)),
        best_score=(float(score[0]), float(score[1])) if score else None,
        best_state=best or None,
    )
