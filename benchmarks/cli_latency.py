"""How fast the ``tlkit`` command answers: median wall time of whole processes, with reference points.

Each command is run ``--repeat`` times as a fresh process (the installed ``tlkit`` beside this
Python), interleaved with the reference points measured in the same run, so machine load affects
them alike:

    python -c pass          the interpreter alone
    python -c "import torch"   what any command that needs torch pays at least

and prints the median, min and max of each, the ratio to ``import torch``, the CPU model and the
flags that matter. ``tlkit backbones`` answers from its listing index once one exists (every run
after the first); ``backbones (no index)`` times the first run, with an empty cache folder each time. Output of the commands is discarded (it is checked by the tests, not here).
Examples::

    python benchmarks/cli_latency.py
    python benchmarks/cli_latency.py --repeat 15 --only=--help,backbones
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ["--help", "--version", "run --help", "backbones", "heads", "cache info"]
TARGETS_S = {"--help": 0.5, "--version": 0.5, "backbones": 1.5}  # issue 14, point 6


def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {cores} cores; flags: {' '.join(shown) or 'none of avx2/avx512/amx'}; load {os.getloadavg()[0]:.1f}"


COLD = "backbones (no index)"


def time_once(argv: list[str], cold: bool = False) -> float:
    env = {**os.environ, "TLKIT_LOAD_PLUGINS": ""}
    with tempfile.TemporaryDirectory() as empty:
        if cold:
            env["TLKIT_CACHE_DIR"] = empty
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--only", help="comma-separated commands to time (default: " + ",".join(COMMANDS) + ")")
    args = parser.parse_args()
    tlkit = str(Path(sys.executable).with_name("tlkit"))
    cases = {"python -c pass": [sys.executable, "-c", "pass"], "import torch": [sys.executable, "-c", "import torch"]}
    chosen = args.only.split(",") if args.only else [*COMMANDS, COLD]
    cases.update({f"tlkit {c}": [tlkit, *shlex.split(c.removesuffix(" (no index)"))] for c in chosen})
    for name, argv in cases.items():  # warm the OS file cache and tlkit's own caches once
        time_once(argv, cold=name.endswith(COLD))
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, argv in cases.items():
            times[name].append(time_once(argv, cold=name.endswith(COLD)))
    torch_median = statistics.median(times["import torch"])
    print(f"CPU: {cpu_description()}")
    print(f"{'command':<28} {'median':>8} {'min':>7} {'max':>7} {'/ import torch':>15}  target")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS_S.get(name.removeprefix("tlkit "))
        verdict = "" if target is None else f"< {target} s: {'yes' if median < target else 'NO'}"
        print(f"{name:<28} {median:>7.2f}s {min(values):>6.2f}s {max(values):>6.2f}s {median / torch_median:>14.2f}x  {verdict}")


if __name__ == "__main__":
    main()
