"""2 processes x 1 thread against 1 process x 2 threads: what rank-parallel extraction gives on one machine.

In one run, on the same images (the ants/bees train split by default) and the same backbone, it times:

(a) plain:    the tutorial's loop (torchvision ImageFolder + Resize/CenterCrop/ToTensor/Normalize,
              DataLoader(batch_size=32, num_workers=0), forward under no_grad), 1 process x T threads;
(b) 1 x T:    ``tlkit.run.stages.extract`` (cache off, decoding workers 0), 1 process x T threads;
(c) P x 1:    ``tlkit.run.stages.extract(shard=Shard(rank, P))`` in P processes x 1 thread each, started
              together; wall time is the slowest rank's (the gather of the features is not included:
              for 244 x 1280 floats it is milliseconds).

It prints images/s for each and the ratios against (a), beside the CPU model and flags. On a
machine with T free cores, (c) measures how much running ranks instead of threads gives: on CPUs
the forward pass already uses the threads well, so expect a ratio near 1, not P; ranks pay off when
they bring more hardware (GPUs, machines), which is what torchrun is for::

    python benchmarks/distributed.py --backbone efficientnet_lite0 --procs 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hymenoptera_data"


def cpu_line() -> str:
    model, flags = "?", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"CPU: {model} [{flags}], {os.cpu_count()} logical cores, load average {load:.1f}"


def _recipe(args: argparse.Namespace):
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import resolve

    return resolve(
        {"name": "bench", "dataset": {"root": str(args.data)}, "backbone": {"name": args.backbone, "weights": args.weights},
         "extract": {"workers": 0, "batch_size": 32, "cache": False, "device": "cpu"}},
        load_plugins(entry_points=False),
    )


def plain(args: argparse.Namespace) -> float:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.set_num_threads(args.threads)
    from tlkit.run import stages

    prepared = stages.prepare(_recipe(args))
    pre = prepared.pipeline.preprocessing
    transform = transforms.Compose([transforms.Resize(pre.resize_size), transforms.CenterCrop(pre.crop_size), transforms.ToTensor(),
                                    transforms.Normalize(pre.mean, pre.std)])
    loader = DataLoader(datasets.ImageFolder(str(args.data / "train"), transform), batch_size=32, num_workers=0)
    model = prepared.backbone.model
    start = time.perf_counter()
    count = 0
    with torch.no_grad():
        for images, _ in loader:
            model(images)
            count += len(images)
    return count / (time.perf_counter() - start)


def one_rank(args: argparse.Namespace, rank: int, world: int, threads: int, barrier, results) -> None:
    import torch

    torch.set_num_threads(threads)
    from tlkit.run import stages

    prepared = stages.prepare(_recipe(args))
    barrier.wait()
    start = time.perf_counter()
    features = stages.extract(prepared, shard=stages.Shard(rank, world) if world > 1 else None, store=None)
    results[rank] = (time.perf_counter() - start, features.extracted)


def tlkit_ranks(args: argparse.Namespace, world: int, threads: int) -> float:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(world), ctx.Manager().dict()
    procs = [ctx.Process(target=one_rank, args=(args, r, world, threads, barrier, results)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if len(results) != world:
        sys.exit("a rank failed")
    seconds = max(s for s, _ in results.values())
    return sum(n for _, n in results.values()) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the one-process runs (a) and (b)")
    parser.add_argument("--repeat", type=int, default=2, help="take the best of this many timings of each")
    args = parser.parse_args()
    print(cpu_line())
    rates = {f"plain 1 x {args.threads}": 0.0, f"tlkit 1 x {args.threads}": 0.0, f"tlkit {args.procs} x 1": 0.0}
    for _ in range(args.repeat):  # interleaved, so a change in machine load hits all three alike
        names = list(rates)
        rates[names[0]] = max(rates[names[0]], plain(args))
        rates[names[1]] = max(rates[names[1]], tlkit_ranks(args, 1, args.threads))
        rates[names[2]] = max(rates[names[2]], tlkit_ranks(args, args.procs, 1))
    base = rates[next(iter(rates))]
    for name, rate in rates.items():
        print(f"{name:<14} {rate:7.1f} img/s   x{rate / base:.2f} vs plain")
    print(cpu_line())


if __name__ == "__main__":
    main()
