"""How fast ``tlkit predict`` classifies a run's images, against eager torch, measured in one run.

Issue 20, must-hold 2: on the 397 ants/bees images of a finished Lite0 run, ``tlkit predict`` with
the feature cache takes under 3 s as a whole process; with the cache off it classifies at least 3x
as many images per second as before; its probabilities equal the run's ``predictions.csv`` within 1e-5.

Measured, in this order, interleaved ``--repeat`` times so machine load hits them alike:

- ``plain eager loop``: the baseline, a plain PyTorch loop (decode, preprocess, forward, head) in
  one process, one batch after another, through the run's own decoding;
- ``old predict path``: what ``tlkit predict`` did before (the extraction loop with its decoding
  workers, on the eager torch module);
- ``new predict, cache off``: ``tlkit.saved.reader.predict(..., cache=False)``: the run's runtime;
- ``tlkit predict`` as whole processes, with the cache (warm) and with ``--no-cache``.

Then it checks the new probabilities against the baseline's and the run's ``predictions.csv``::

    python benchmarks/predict.py                     # runs the Lite0 recipe once into a temporary folder
    python benchmarks/predict.py --run runs/hymenoptera-lite0 --repeat 3
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_latency import cpu_description  # noqa: E402

DATA = Path("/work/shared/data/hymenoptera_data")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "hymenoptera.yaml"


def finished_run(data: Path, out: Path) -> Path:
    """A Lite0 run of the ants/bees recipe (its features then sit in the cache)."""
    command = [sys.executable, "-m", "tlkit", "run", str(RECIPE), "--set", "backbone.name=efficientnet_lite0", "--set", f"dataset.root={data}", "--out", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def plain_loop(model, files: list[Path]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The baseline: decode and preprocess in this process, eager forward pass, head, softmax; batch after batch."""
    from tlkit.extract.decode import pipeline_named

    decode = pipeline_named(model.pipeline.decoder, model.preprocessing, model.pipeline.background)
    backbone = model.backbone.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(files), model.batch_size):
            batch = torch.stack([decode(p) for p in files[start : start + model.batch_size]])
            out.append(model.head(backbone(batch).flatten(1)).softmax(1))
    return torch.cat(out)


def old_path(model, files: list[Path]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``tlkit predict`` before: the extraction loop (decoding workers) on the eager torch module."""
    from tlkit.extract.features import extract, prepare_model

    device = torch.device("cpu")
    result = extract(prepare_model(model.backbone, device), files, model.pipeline, batch_size=model.batch_size, device=device)
    with torch.no_grad():
        return model.head(result.features).softmax(1)


def whole_process(run_dir: Path, data: Path, *extra: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "tlkit", "predict", str(run_dir), str(data), "--csv", f"{tmp}/p.csv", *extra] if run_dir.name else [sys.executable, "-c", "import torch"]
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


PROCESSES = {"python -c 'import torch'": (), "tlkit predict (cache)": (), "tlkit predict --json (cache)": ("--json",), "tlkit predict --no-cache": ("--no-cache",)}


def recorded(run_dir: Path) -> dict[str, float]:
    with (run_dir / "predictions.csv").open(newline="") as fh:
        return {row["path"]: float(row["confidence"]) for row in csv.DictReader(fh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished Lite0 run of recipes/hymenoptera.yaml (default: made now)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes-only", action="store_true", help="time only the whole processes (no in-process loops)")
    args = parser.parse_args()
    from tlkit.contract.plugin_manager import get_plugins
    from tlkit.saved.reader import image_files, load_model, predict

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run or finished_run(args.data, Path(tmp) / "run")
        model = load_model(run_dir, get_plugins())
        files = image_files([args.data])
        rates: dict[str, list[float]] = {"plain eager loop": [], "old predict path": [], "new predict, cache off": []}
        walls: dict[str, list[float]] = {name: [] for name in PROCESSES}
        new = predict(model, files, cache=False)  # converts or loads the runtime once, as a first predict would
        baseline = new.probabilities
        for _ in range(args.repeat):
            for name, fn in () if args.processes_only else (("plain eager loop", plain_loop), ("old predict path", old_path)):
                started = time.perf_counter()
                baseline = fn(model, files)
                rates[name].append(len(files) / (time.perf_counter() - started))
            started = time.perf_counter()
            new = predict(model, files, cache=False)
            rates["new predict, cache off"].append(len(files) / (time.perf_counter() - started))
            for name, extra in PROCESSES.items():
                walls[name].append(whole_process(run_dir if "tlkit" in name else Path(""), args.data, *extra))
        report({k: v for k, v in rates.items() if v}, walls, len(files), new, baseline, recorded(run_dir))


def report(rates, walls, n, new, baseline, saved) -> None:  # type: ignore[no-untyped-def]
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; {n} images")
    print(f"new predict: {new.note or 'all cached'}")
    plain = statistics.median(rates.get("plain eager loop", [float("nan")]))
    old = statistics.median(rates.get("old predict path", [float("nan")]))
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:7.1f} img/s  {median / plain:5.2f}x plain loop  {median / old:5.2f}x old path   (runs: {', '.join(f'{v:.1f}' for v in values)})")
    for name, values in walls.items():
        print(f"{name:<28} {statistics.median(values):7.2f} s whole process (runs: {', '.join(f'{v:.2f}' for v in values)})")
    by_path = dict(zip(map(str, new.paths), new.probabilities))
    vs_baseline = float((new.probabilities - baseline).abs().max()) if len(new.paths) == len(baseline) else float("nan")
    vs_csv = max(abs(float(by_path[p].max()) - c) for p, c in saved.items())
    print(f"max |p_new - p_plain loop| = {vs_baseline:.2e}; max |p_new - predictions.csv| = {vs_csv:.2e} (bound 1e-05: {'yes' if vs_csv <= 1e-5 else 'NO'})")


if __name__ == "__main__":
    main()
