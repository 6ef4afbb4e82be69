"""How long ``tlkit backbones`` takes with a plugin that calls ``tlkit.backbones.registered()`` in its hook.

Issue 20, must hold 6: listing with such a plugin takes no longer than with the same plugin not
calling it (within 10%). Before the fix each call loaded the plugins again, about 600 levels deep
(listing 10.8 s -> 31.7 s, and a false "plugin skipped" warning).

Two one-module plugin packages are built and installed into a throwaway folder (``pip install
--target``, as the tests do); each registers one backbone derived from ``efficientnet_lite0``, one of
them reading ``registered("efficientnet_lite0")`` in the hook first. ``tlkit backbones`` runs as a
whole process with an empty cache folder each time (no listing index: the plugins really load),
the three cases interleaved ``--repeat`` times so machine load affects them alike::

    python benchmarks/listing.py               # prints medians, ratios, the CPU and the load
    python benchmarks/listing.py --repeat 9
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_latency import cpu_description  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from plugin_packages import write_package  # type: ignore[import-not-found]  # noqa: E402

PLUGIN = '''\
import torch

import tlkit


def _cut(model: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(model.conv_stem, model.bn1, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


@tlkit.hookimpl
def register_backbones(register):
    {lookup}
    register(tlkit.backbones.derived_spec("{name}_stem", "efficientnet_lite0", _cut, feature_dim=32))
'''


def write_plugin(root: Path, dist: str, lookup: bool) -> Path:
    """The benchmark's plugin package, written by the tests' own helper (tests/plugin_packages.py)."""
    line = 'assert tlkit.backbones.registered("efficientnet_lite0").feature_dim == 1280' if lookup else "pass"
    return write_package(root, dist, PLUGIN.format(lookup=line, name=dist.replace("-", "_")))


def time_listing(site: Path, load: str) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of one ``tlkit backbones`` process with only plugin ``load`` (empty: none), and its stderr.

    CPU time is what the process itself did: on a shared machine it moves far less with the load
    than wall time does, so both are shown.
    """
    tlkit = str(Path(sys.executable).with_name("tlkit"))
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TLKIT_CACHE_DIR": cache, "TLKIT_LOAD_PLUGINS": load}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([tlkit, "backbones"], capture_output=True, text=True, env=env, check=False)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"tlkit backbones failed ({load or 'no plugin'}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = [write_plugin(root, "bench-plain", lookup=False), write_plugin(root, "bench-lookup", lookup=True)]
        site = root / "site"
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site)]
        subprocess.run([*pip, *map(str, sources)], check=True)
        cases = {"no plugin": "", "plugin, no registered()": "bench-plain", "plugin calling registered()": "bench-lookup"}
        for load in cases.values():  # warm the OS file cache once
            time_listing(site, load)
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        warnings_seen: set[str] = set()
        for _ in range(args.repeat):
            for name, load in cases.items():
                elapsed, used, stderr = time_listing(site, load)
                wall[name].append(elapsed)
                cpu[name].append(used)
                warnings_seen.update(line for line in stderr.splitlines() if "warning" in line.lower())
    print(f"CPU: {cpu_description()}")
    print(f"python {sys.version.split()[0]}; {args.repeat} interleaved runs each; whole `tlkit backbones` processes, no listing index")
    for label, times in (("wall s", wall), ("CPU s", cpu)):
        base = statistics.median(times["plugin, no registered()"])
        print(f"{'case':<30} {label:>9} {'min':>7} {'max':>7} {'median / plugin without registered()':>38}")
        for name, values in times.items():
            print(f"{name:<30} {statistics.median(values):>9.2f} {min(values):>7.2f} {max(values):>7.2f} {statistics.median(values) / base:>38.2f}")
        ratio = statistics.median(times["plugin calling registered()"]) / base
        print(f"must hold 6 by {label} (median ratio <= 1.10): {ratio:.2f} -> {'holds' if ratio <= 1.10 else 'DOES NOT HOLD'}\n")
    print("warnings on stderr: " + ("; ".join(sorted(warnings_seen)) if warnings_seen else "none"))


if __name__ == "__main__":
    main()
