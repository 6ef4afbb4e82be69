"""Runs past one process: torchrun / SLURM ranks, each extracting a disjoint shard of the images.

Under ``torchrun`` (or ``srun`` with one task per rank) every rank builds the same backbone and data
set, extracts only its :class:`Shard` of each split, and hands its features to rank 0, which trains
the head once and alone writes the run directory. Without a launcher nothing here is used.

Why these choices:

- **Unpadded shards.** ``torch.utils.data.DistributedSampler`` pads the last shard with repeated
  images so every rank gets as many; features must be one per image, so a shard
  (:class:`tlkit.run.stages.Shard` with ``block`` = batch size) is every ``world``-th batch from
  ``rank``: no image twice, none missed, and each batch one that a one-process run computes.
- **Backend chosen from the device.** gloo on CPU, nccl when the ranks run on CUDA, each rank on the
  GPU of its ``LOCAL_RANK``.
- **Nothing received is unpickled.** Ranks exchange tensors and UTF-8 JSON records only (a length
  first, bounded by :data:`MAX_RECORD_BYTES`, then the bytes), never ``gather_object`` or
  ``broadcast_object_list``, which unpickle what a peer sends: whoever reaches ``MASTER_PORT`` could
  otherwise run code in rank 0. A malformed record is one line naming the rank that sent it.
- **Every collective has a deadline.** The process group's timeout (``TLKIT_DIST_TIMEOUT`` seconds)
  bounds every wait, joining the group included (torch's store client can wait forever on a port held
  by another service, so the join runs in a thread that is given up at the deadline), and a failed collective or the launcher's SIGTERM (torchrun stops the other
  ranks when one dies) becomes one :class:`DistributedError` line on rank 0, never a hang. The
  features each rank extracted are already in the feature cache, so a rerun resumes there.
"""

from __future__ import annotations

import gc
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from tlkit.errors import TlkitError
from tlkit.run.signals import sigterm_raises
from tlkit.util.units import bounded_wait, positive_number

TIMEOUT_ENV = "TLKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
MAX_RECORD_BYTES = 64 * 2**20  # a JSON record from a peer (positions, skipped files, the result)


class DistributedError(TlkitError):
    """A rank failed, timed out or was stopped, or the launcher's environment is malformed."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a multi-process run, as the launcher described it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: str | None = None
    launcher: str = "none"  # "torchrun", "slurm" or "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


def _int(environ: Mapping[str, str], key: str) -> int:
    raw = environ.get(key, "")
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {key}={raw!r} is not an integer; launch with torchrun or srun, which set it") from None


def detect(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The rank layout from torchrun's variables (``RANK``, ``WORLD_SIZE``, ...) or else SLURM's.

    ``srun`` launching ``torchrun`` is seen as torchrun (torchrun sets ``RANK``); ``srun`` starting one
    tlkit per task is read from ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``, with
    ``MASTER_ADDR`` / ``MASTER_PORT`` set by the job script. One task means a plain run.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        keys, launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK"), "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        keys, launcher = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"), "slurm"
    else:
        return DistEnv()
    rank, world = _int(env, keys[0]), _int(env, keys[1])
    local = _int(env, keys[2]) if keys[2] in env else 0
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"{keys[0]}={rank} does not fit {keys[1]}={world}; the launcher's environment is inconsistent")
    if world == 1:
        return DistEnv(launcher=launcher)
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if not addr or not port:
        raise DistributedError(
            f"{launcher} started {world} ranks but MASTER_ADDR/MASTER_PORT are not set; "
            "export them in the job script (the first node's host name and a free port) or launch through torchrun"
        )
    return DistEnv(rank, world, local, addr, port, launcher)


def timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds any collective may wait (``TLKIT_DIST_TIMEOUT``, default 30 minutes; ``inf``: no limit)."""
    try:
        return positive_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, environ)
    except ValueError as exc:
        raise DistributedError(f"{exc} (seconds)") from None


def device_for(env: DistEnv, setting: str = "auto") -> torch.device:
    """The rank's device: its ``LOCAL_RANK`` GPU when CUDA is used, else the CPU."""
    use_cuda = setting == "cuda" or (setting == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedError("extract.device is 'cuda' but this rank sees no CUDA device")
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise DistributedError(f"LOCAL_RANK={env.local_rank} but this node has {count} GPU(s); start at most {count} ranks per node")
    return torch.device("cuda", env.local_rank)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


_group_timeout = [DEFAULT_TIMEOUT_S]  # the running group's deadline, for messages
_group_device = [torch.device("cpu")]  # where the exchanged tensors live (nccl: this rank's GPU)


class _Stopped(BaseException):
    """SIGTERM from the launcher (torchrun stops every rank when one fails)."""


@contextmanager
def process_group(env: DistEnv, device: torch.device, timeout: float | None = None) -> Iterator[None]:
    """Join the run's process group for the duration of the block, and leave it however the block ends.

    Inside, SIGTERM raises :class:`DistributedError` naming the rank, so the launcher stopping this
    rank after another died is one line, and the DataLoader workers are shut down on the way out.
    """
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    seconds = timeout_s() if timeout is None else timeout
    _group_timeout[0] = seconds
    _group_device[0] = device
    _join(env, device, seconds)
    stopped = DistributedError(
        f"{env.label()} was stopped by the launcher (SIGTERM): another rank failed or the job was cancelled; "
        "every feature extracted so far is in the feature cache, and a rerun resumes from it"
    )
    try:
        with sigterm_raises(_Stopped):  # the workers the launcher's killpg also killed are not reported over it
            yield
    except _Stopped:  # also when decoding workers died of the launcher's SIGTERM first (features._guarded)
        raise stopped from None
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a broken group cannot be torn down cleanly; the process is ending anyway
            pass
        # The group's C++ side (gloo's worker threads, the work items holding tensors) is freed now, while the
        # interpreter is whole: freed during interpreter shutdown instead, it can abort the process (SIGABRT).
        gc.collect()


def leave_together(env: DistEnv) -> None:
    """A barrier before the ranks tear the group down, so none closes its connections while a peer still uses them.

    Called only where every rank calls it (right after a collective all of them completed), so no rank
    waits for one that left. A barrier that fails means a peer is already gone: nothing is left to
    wait for, and the caller goes on to tear the group down.
    """
    import torch.distributed as dist

    try:
        dist.barrier()
    except Exception:  # noqa: BLE001 - gloo/nccl raise RuntimeError or DistBackendError when a peer has gone
        pass


def _join(env: DistEnv, device: torch.device, seconds: float) -> None:
    """``init_process_group``, given up at the deadline even where torch's store client would wait forever.

    A non-zero rank whose ``MASTER_PORT`` is held by another service (one that accepts and never
    answers) waits in the store's handshake without a timeout; the join runs in a daemon thread so
    that wait ends at ``seconds`` (plus a little, so torch's own timeout message comes first).
    """
    import torch.distributed as dist

    where = f"{env.master_addr}:{env.master_port}"
    failure: list[BaseException] = []

    def join() -> None:
        try:
            dist.init_process_group(
                backend_for(device), init_method=f"tcp://{where}", rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=bounded_wait(seconds))
            )
        except BaseException as exc:  # noqa: BLE001 - rendezvous failures come as RuntimeError, DistStoreError, TimeoutError
            failure.append(exc)

    thread = threading.Thread(target=join, name="tlkit-join", daemon=True)
    thread.start()
    thread.join(seconds + min(5.0, seconds) if seconds < 1e9 else None)
    if thread.is_alive():
        raise DistributedError(
            f"{env.label()}: cannot join the process group at {where}: nothing answered as rank 0's store within {seconds:.0f} s "
            f"(another service may hold MASTER_PORT, or rank 0 is not running; use a free port reachable only by the job's hosts)"
        )
    if failure:
        raise DistributedError(f"{env.label()}: cannot join the process group at {where} ({_first_line(failure[0])})") from None


def _first_line(exc: BaseException) -> str:
    """The backend's message without its C++ source location (``[.../pair.cc:534] Read error ...``)."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip())
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


@contextmanager
def collective(env: DistEnv, what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into one line that names the rank and what it waited for."""
    try:
        yield
    except _Stopped:
        raise
    except Exception as exc:  # noqa: BLE001 - gloo/nccl raise RuntimeError or DistBackendError
        raise DistributedError(
            f"{env.label()}: another rank failed or did not answer within {_group_timeout[0]:.0f} s while {what} ({_first_line(exc)}); "
            f"the features extracted so far are in the feature cache: rerun to resume (raise {TIMEOUT_ENV} for slow ranks)"
        ) from None


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record as the UTF-8 JSON bytes ranks exchange (paths and other non-JSON values as strings)."""
    return json.dumps(record, default=str, separators=(",", ":")).encode("utf-8")


def decode_record(rank: int, data: bytes, what: str) -> dict[str, Any]:
    """A peer's bytes as a JSON object, or one line naming the rank that sent something else."""
    try:
        value = json.loads(data.decode("utf-8"))
        reason = "" if isinstance(value, dict) else f"a JSON {type(value).__name__}, not a record"
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = f"not UTF-8 JSON: {_first_line(exc)[:80]}"
    if reason:
        raise MalformedRecord(rank, what, reason)
    return value


class MalformedRecord(DistributedError):
    """A peer sent bytes that are not the record expected (another tlkit, or a stranger on ``MASTER_PORT``)."""

    def __init__(self, rank: int, what: str, reason: str) -> None:
        super().__init__(
            f"rank {rank} sent a malformed record while {what} ({reason}); nothing it sent was used. Every rank must run "
            "the same tlkit, and MASTER_ADDR:MASTER_PORT must be reachable only by the job's own hosts"
        )


@dataclass(frozen=True)
class Received:
    """What one rank sent to rank 0: a record's bytes (decoded only by :meth:`record`) and a flat float tensor."""

    rank: int
    data: bytes
    floats: torch.Tensor

    def record(self, what: str) -> dict[str, Any]:
        return decode_record(self.rank, self.data, what)


def _sizes(env: DistEnv, sizes: list[int], limits: list[tuple[int, str]], what: str) -> list[list[int]]:
    """Every rank's sizes (all-gathered), each checked against its bound on every rank, so all refuse alike."""
    import torch.distributed as dist

    mine = torch.tensor(sizes, dtype=torch.int64, device=_group_device[0])
    out = [torch.zeros_like(mine) for _ in range(env.world_size)]
    with collective(env, what):
        dist.all_gather(out, mine)
    table = [row.cpu().tolist() for row in out]
    for rank, row in enumerate(table):
        for value, (limit, unit) in zip(row, limits):
            if not 0 <= value <= limit:
                raise MalformedRecord(rank, what, f"it announced {value} {unit}, outside 0..{limit}")
    return table


def _padded(data: bytes | torch.Tensor, size: int) -> torch.Tensor:
    """``data`` as a flat uint8 (bytes) or float32 tensor of ``size`` elements (at least one), on the group's device."""
    if isinstance(data, bytes):
        flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    else:
        flat = data.detach().reshape(-1).float().cpu()
    padded = torch.zeros(max(size, 1), dtype=flat.dtype)
    padded[: flat.numel()] = flat
    return padded.to(_group_device[0])


def _gather(env: DistEnv, tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
    import torch.distributed as dist

    out = [torch.empty_like(tensor) for _ in range(env.world_size)] if env.is_main else None
    with collective(env, what):
        dist.gather(tensor, out, dst=0)
    return [t.cpu() for t in out or []]


def gather_to_main(env: DistEnv, record: Mapping[str, Any], what: str, floats: torch.Tensor | None = None, max_floats: int = 0) -> list[Received] | None:
    """Every rank's JSON ``record`` and ``floats`` (flattened) on rank 0, in rank order; ``None`` on the others.

    Sizes go first and are bounded on every rank (:data:`MAX_RECORD_BYTES`, ``max_floats``); the bytes
    are decoded only by :meth:`Received.record`, as JSON, never unpickled.
    """
    data = encode_record(record)
    values = torch.empty(0) if floats is None else floats
    table = _sizes(env, [len(data), values.numel()], [(MAX_RECORD_BYTES, "bytes of record"), (max_floats, "feature values")], what)
    blobs = _gather(env, _padded(data, max(row[0] for row in table)), what)
    numbers = _gather(env, _padded(values, max(row[1] for row in table)), what)
    if not env.is_main:
        return None
    return [Received(r, blobs[r][: table[r][0]].numpy().tobytes(), numbers[r][: table[r][1]]) for r in range(env.world_size)]


def all_gather_records(env: DistEnv, record: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
    """Every rank's JSON ``record`` on every rank, in rank order (bounded, decoded as JSON only)."""
    import torch.distributed as dist

    data = encode_record(record)
    table = _sizes(env, [len(data)], [(MAX_RECORD_BYTES, "bytes of record")], what)
    mine = _padded(data, max(row[0] for row in table))
    out = [torch.empty_like(mine) for _ in range(env.world_size)]
    with collective(env, what):
        dist.all_gather(out, mine)
    return [decode_record(r, out[r].cpu()[: table[r][0]].numpy().tobytes(), what) for r in range(env.world_size)]


def broadcast_from_main(env: DistEnv, record: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """Rank 0's JSON ``record`` on every rank (the others pass ``None``); bounded, decoded as JSON only."""
    import torch.distributed as dist

    data = encode_record(record or {}) if env.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=_group_device[0])
    with collective(env, what):
        dist.broadcast(size, src=0)
    length = int(size.item())
    if not 0 <= length <= MAX_RECORD_BYTES:
        raise MalformedRecord(0, what, f"it announced {length} bytes of record, outside 0..{MAX_RECORD_BYTES}")
    box = _padded(data, length)
    with collective(env, what):
        dist.broadcast(box, src=0)
    return decode_record(0, box.cpu().numpy().tobytes(), what)
