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
- **Every collective has a deadline.** The process group's timeout (``TLKIT_DIST_TIMEOUT`` seconds)
  bounds every wait, and a failed collective or the launcher's SIGTERM (torchrun stops the other
  ranks when one dies) becomes one :class:`DistributedError` line on rank 0, never a hang. The
  features each rank extracted are already in the feature cache, so a rerun resumes there.
"""

from __future__ import annotations

import os
import re
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
    try:
        dist.init_process_group(
            backend_for(device),
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=bounded_wait(seconds)),  # inf: no limit (a year for torch)
        )
    except Exception as exc:  # noqa: BLE001 - rendezvous failures come as RuntimeError, DistStoreError, TimeoutError
        raise DistributedError(f"{env.label()}: cannot join the process group at {env.master_addr}:{env.master_port} ({_first_line(exc)})") from None
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


def gather_to_main(env: DistEnv, value: Any, what: str) -> list[Any] | None:
    """Every rank's ``value`` on rank 0 (in rank order), ``None`` on the others."""
    import torch.distributed as dist

    received: list[Any] | None = [None] * env.world_size if env.is_main else None
    with collective(env, what):
        dist.gather_object(value, received, dst=0)
    return received


def broadcast_from_main(env: DistEnv, value: Any, what: str) -> Any:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    box = [value if env.is_main else None]
    with collective(env, what):
        dist.broadcast_object_list(box, src=0)
    return box[0]
