"""SIGTERM sent to the whole process group (torchrun's ``os.killpg``, ``kill -TERM -PGID``) stays a SIGTERM.

The DataLoader's decoding workers die of the same signal, and torch's SIGCHLD handler reports each
death as ``RuntimeError: DataLoader worker ... killed by signal: Terminated``, raised in whatever
Python code runs when the report arrives. On a loaded machine that is the cleanup the SIGTERM
started, and the RuntimeError replaced the SIGTERM's exception: a rank printed a traceback instead of
its one "stopped by the launcher" line (issue 17). Here the cleanup is made slow on purpose, so the
workers' deaths are always reported during it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Slow(Dataset):
        def __len__(self):
            return 10_000

        def __getitem__(self, index):
            time.sleep(0.01)
            return torch.zeros(3)

    def busy(seconds):  # Python code running, so pending signal handlers run inside it
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    def stopped_mid_extraction():
        batches = iter(DataLoader(Slow(), batch_size=4, num_workers=2))
        next(batches)
        launcher = f"import os, signal; os.killpg({os.getpgid(0)}, signal.SIGTERM)"
        try:
            # torchrun's way: another process signals this one's whole group, the decoding workers too
            # (a worker signalled by its own parent exits quietly; signalled by anyone else it dies of it)
            subprocess.Popen([sys.executable, "-c", launcher], start_new_session=True)
            busy(20)
        finally:
            busy(3)  # a slow cleanup (saving features on a loaded machine) while the workers die
            batches._shutdown_workers()

    if sys.argv[1] == "run":
        from tlkit.run.signals import terminate_as_interrupt

        context = terminate_as_interrupt()
    else:
        from tlkit.run.ranks import DistEnv, process_group

        # a real gloo group of one rank on the loopback: nothing to wait for, the same SIGTERM handling
        context = process_group(DistEnv(0, 1, 0, "127.0.0.1", sys.argv[2], "torchrun"), torch.device("cpu"), timeout=60)
    try:
        with context:
            stopped_mid_extraction()
    except BaseException as exc:
        print(f"{type(exc).__name__}: {exc}")
    """
)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("run", "Terminated: "),  # tlkit run in one process: exit 143, "stopped by SIGTERM"
        ("rank", "DistributedError: rank 0/1 was stopped by the launcher (SIGTERM)"),
    ],
)
def test_workers_killed_by_the_group_sigterm_do_not_replace_it(where: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, where, _free_port()],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # its own process group, so the killpg reaches only the script and its workers
    )
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith(expected), done.stdout + done.stderr
    assert "killed by signal" not in done.stdout + done.stderr and "Traceback" not in done.stderr, done.stdout + done.stderr
