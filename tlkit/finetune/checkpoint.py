"""Checkpoints of a fine-tuning run: everything needed to continue it as if it had never stopped.

A checkpoint is two files in the run's ``checkpoints/`` folder: ``epoch-NNNN.safetensors`` (every
tensor: the model's state, the best epoch's state when a held-out split chooses it, the optimiser's
buffers, torch's random state) and ``checkpoint.json`` (the rest: epoch, optimiser hyper-parameters,
scheduler step, Python's and numpy's random state, the history, the recipe it belongs to, and the
data listing it was trained on, :func:`data_listing`, so a resume on changed data is refused). Both are
written with :func:`tlkit.util.atomic.write_atomic`, the tensors first and the state file last: the state
file names its tensor file and that file's sha256, so a kill at any moment leaves the previous
checkpoint or the new one, never a mix. Older tensor files are deleted only after the new state file
is in place.

``checkpoint.json`` carries a ``checksum`` over all of its fields (:func:`state_checksum`), so a
damaged field is caught before any is used, and it is parsed into a :class:`CheckpointRecord` with
bounds (an epoch is a whole number in range, the tensor file a plain name in the folder, the
history numbers, ...): an edited file that still checks out is one line, never a ``KeyError``. Both
files are read only when regular and within a size bound (no FIFO, no ``/dev/zero``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load, save

from tlkit.contract.specs import Sample
from tlkit.errors import OutputError, RunError
from tlkit.util.atomic import write_atomic
from tlkit.util.hashing import json_sha256
from tlkit.util.regular_files import UnsafeFile, read_regular

STATE_FILE = "checkpoint.json"
FORMAT = 2  # 2: the checksum covers every field
MAX_STATE_BYTES = 256 * 2**20  # the history and optimiser settings of a long run stay far below
MAX_TENSOR_BYTES = 64 * 2**30
MAX_EPOCHS = 1_000_000
_TENSOR_NAME = re.compile(r"epoch-\d{4,7}\.safetensors")
MAX_SAMPLES = 10_000_000  # fingerprints of the data listing a checkpoint records
_PRINT_LENGTH = 16
_PRINT = re.compile(f"[0-9a-f]{{{_PRINT_LENGTH}}}")


class CheckpointNotWritten(OutputError):
    """A checkpoint could not be written (a full disk, an I/O error); the previous one, if any, is intact."""


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
    info: dict[str, Any] = {
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
    info["checksum"] = state_checksum(info)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / name, data)
        target = write_atomic(folder / STATE_FILE, (json.dumps(info, allow_nan=True) + "\n").encode("utf-8"))
    except OSError as exc:
        raise CheckpointNotWritten(f"cannot write the checkpoint after epoch {state.epoch} in {folder} ({exc.strerror or exc})") from None
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return target


def state_checksum(info: Mapping[str, Any]) -> str:
    """The sha256 of every field of ``checkpoint.json`` but ``checksum`` itself (canonical JSON)."""
    return json_sha256({k: v for k, v in info.items() if k != "checksum"})


@dataclass(frozen=True)
class CheckpointRecord:
    """``checkpoint.json`` checked field by field (the mappings handed to torch are checked in :func:`restore`)."""

    epoch: int
    tensors: str
    sha256: str
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    best_score: tuple[float, float] | None
    recipe: dict[str, Any]
    scaler: dict[str, Any] | None = None
    path: Path = Path(STATE_FILE)  # where it was read from, for messages
    data: tuple[str, ...] | None = None  # the data listing it was trained on (:func:`data_listing`); None: not recorded


def data_listing(splits: Mapping[str, Sequence[Sample]]) -> list[str]:
    """One short fingerprint per sample (split, path, size in bytes or a member's sha256, label), sorted.

    Recorded in every checkpoint, so a ``--resume`` on a data set that changed since (images added,
    removed, replaced by ones of another size, relabelled) is refused, saying how many changed.
    """
    prints = []
    for split, samples in splits.items():
        for sample in samples:
            if sample.member is not None:
                content = sample.member.sha256
            else:
                try:
                    content = str(os.stat(sample.path).st_size)
                except OSError:
                    content = "missing"
            key = "\0".join((split, str(sample.path), content, str(sample.label)))
            prints.append(hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:_PRINT_LENGTH])
    return sorted(prints)


def changed_data(saved: Sequence[str], current: Sequence[str]) -> tuple[int, int] | None:
    """``(added, removed)`` images between two listings (a changed image counts once in each); None when equal."""
    before, now = Counter(saved), Counter(current)
    if before == now:
        return None
    return sum((now - before).values()), sum((before - now).values())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_record(info: Any, path: Path) -> CheckpointRecord:
    """``info`` (the JSON of ``checkpoint.json``) as a :class:`CheckpointRecord`; the first wrong field is one :class:`RunError`."""

    def wrong(key: str, expected: str) -> RunError:
        shown = json.dumps(info.get(key) if isinstance(info, dict) else info)[:40]
        return RunError(f"checkpoint {path}: '{key}' must be {expected}, not {shown}; delete {path.parent} to start again")

    if not isinstance(info, dict):
        raise wrong("(top)", "an object")
    epoch = info.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= MAX_EPOCHS:
        raise wrong("epoch", f"a whole number from 0 to {MAX_EPOCHS}")
    if not isinstance(info.get("tensors"), str) or not _TENSOR_NAME.fullmatch(info["tensors"]):
        raise wrong("tensors", "a file name epoch-NNNN.safetensors")
    for key in ("optimizer", "scheduler", "rng", "recipe"):
        if not isinstance(info.get(key), dict):
            raise wrong(key, "an object")
    history = info.get("history")
    if not isinstance(history, list) or not all(isinstance(p, dict) and all(isinstance(k, str) and _number(v) for k, v in p.items()) for p in history):
        raise wrong("history", "a list of objects of numbers")
    best_epoch = info.get("best_epoch", 0)
    if not isinstance(best_epoch, int) or isinstance(best_epoch, bool) or not 0 <= best_epoch <= epoch:
        raise wrong("best_epoch", f"a whole number from 0 to the epoch ({epoch})")
    score = info.get("best_score")
    if score is not None and not (isinstance(score, list) and len(score) == 2 and all(_number(v) for v in score)):
        raise wrong("best_score", "null or two numbers")
    if info.get("scaler") is not None and not isinstance(info["scaler"], dict):
        raise wrong("scaler", "null or an object")
    listing = info.get("data")
    if listing is not None and not (
        isinstance(listing, list) and len(listing) <= MAX_SAMPLES and all(isinstance(p, str) and _PRINT.fullmatch(p) for p in listing)
    ):
        raise wrong("data", f"null or a list of at most {MAX_SAMPLES} sample fingerprints")
    return CheckpointRecord(
        epoch=epoch, tensors=info["tensors"], sha256=str(info.get("sha256")), optimizer=info["optimizer"], scheduler=info["scheduler"],
        rng=info["rng"], history=[{k: float(v) for k, v in p.items()} for p in history], best_epoch=best_epoch,
        best_score=(float(score[0]), float(score[1])) if score else None, recipe=info["recipe"], scaler=info.get("scaler"), path=path,
        data=tuple(listing) if listing is not None else None,
    )


def read_checkpoint(folder: Path) -> tuple[CheckpointRecord, dict[str, torch.Tensor]] | None:
    """The state and tensors of the checkpoint in ``folder`` (``None`` when there is none); checks the checksums first."""
    path = folder / STATE_FILE
    if not path.exists() and not path.is_symlink():
        return None
    again = f"delete {folder} to start again"
    try:
        info = json.loads(read_regular(path, MAX_STATE_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnsafeFile is a ValueError: a FIFO, a huge file
        raise RunError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); {again}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("checksum") != state_checksum(info):
        raise RunError(f"checkpoint {path} is damaged or from another tlkit (its checksum does not match its fields); {again}")
    record = parse_record(info, path)
    try:
        data = read_regular(folder / record.tensors, MAX_TENSOR_BYTES)
    except (OSError, UnsafeFile) as exc:
        raise RunError(f"checkpoint {path}: its tensor file {record.tensors} cannot be read ({type(exc).__name__}: {str(exc)[:80]}); {again}") from None
    if hashlib.sha256(data).hexdigest() != record.sha256:
        raise RunError(f"checkpoint {path} does not match its tensor file {record.tensors}; {again}")
    try:
        return record, load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise RunError(f"checkpoint tensor file {folder / record.tensors} cannot be read ({str(exc)[:80]}); {again}") from None


def restore(
    info: CheckpointRecord, tensors: Mapping[str, torch.Tensor], model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any = None
) -> TrainingState:
    """Put model, optimiser, scheduler and random state back as they were; returns the training state.

    A record that passed :func:`parse_record` but does not fit this model, optimiser or scheduler
    (an edited file that still checks out) is one :class:`RunError`.
    """
    try:
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        optimizer.load_state_dict(_optimizer_state(tensors, info.optimizer))
        scheduler.load_state_dict(info.scheduler)
        _set_rng_state(tensors, info.rng)
        if scaler is not None and info.scaler:
            scaler.load_state_dict(info.scaler)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError, OverflowError) as exc:
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise RunError(f"checkpoint {info.path} does not fit this run ({type(exc).__name__}: {reason}); delete {info.path.parent} to start again") from None
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    return TrainingState(epoch=info.epoch, history=[dict(p) for p in info.history], best_epoch=info.best_epoch, best_score=info.best_score, best_state=best or None)
