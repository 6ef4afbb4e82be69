"""A warm rerun of the ants/bees Lite0 recipe as a whole process, against ``python -c 'import torch'``.

Issue 20, must-hold 3: with every feature cached, ``tlkit run recipes/hymenoptera.yaml --set
backbone.name=efficientnet_lite0 --set dataset.root=...`` takes at most 2x the time of
``python -c 'import torch'``. One cold run fills the caches (features, converted model, the warm
memo, the plots); then ``import torch`` and the rerun are timed alternately ``--repeat`` times, so
load hits both alike. Prints the medians, the ratio, the CPU, and each rerun's summary ``time``
beside the wall time measured here (the summary must report the command's wall time)::

    python benchmarks/warm_rerun.py --repeat 5
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_latency import cpu_description  # noqa: E402

DATA = Path("/work/shared/data/hymenoptera_data")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "hymenoptera.yaml"
SUMMARY_TIME = re.compile(r"time\s*\S\s*([0-9.]+) s")


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rerun = [sys.executable, "-m", "tlkit", "run", str(RECIPE), "--set", "backbone.name=efficientnet_lite0", "--set", f"dataset.root={args.data}", "--out", f"{tmp}/run"]
        torch_only = [sys.executable, "-c", "import torch"]
        timed(rerun)  # fills the caches if they were empty (a cold run), and warms the OS file cache
        times: dict[str, list[float]] = {"import torch": [], "warm rerun": []}
        shown: list[tuple[float, float]] = []
        for _ in range(args.repeat):
            times["import torch"].append(timed(torch_only)[0])
            wall, out = timed(rerun)
            times["warm rerun"].append(wall)
            found = SUMMARY_TIME.search(out)
            shown.append((wall, float(found.group(1)) if found else float("nan")))
    print(f"CPU: {cpu_description()}")
    for name, values in times.items():
        print(f"{name:<14} median {statistics.median(values):6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(times["warm rerun"]) / statistics.median(times["import torch"])
    print(f"warm rerun / import torch = {ratio:.2f}x (bound 2x: {'yes' if ratio <= 2 else 'NO'})")
    print("summary time vs wall time measured here: " + ", ".join(f"{s:.1f} s / {w:.1f} s" for w, s in shown))


if __name__ == "__main__":
    main()
