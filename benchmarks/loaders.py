"""Ants/bees as a folder, a CSV manifest, a ``datasets`` copy (Arrow) and hub Parquet: listing time and uncached
extraction throughput of each form, as ratios to the folder measured in the same run.

The table forms decode each image from the table's bytes (never written out), their workers sharing one big
table row by row; the CSV form opens the same files as the folder. Each form must give the folder's features
(same bytes, same decoder): the script checks that too. The machine is shared, so only the ratios mean anything;
the CPU, its flags and the load are printed beside them.

    python benchmarks/loaders.py --data /work/shared/data/hymenoptera_data --repeat 2
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_latency import cpu_description  # noqa: E402

from tlkit.contract.options import validate_options  # noqa: E402
from tlkit.contract.plugin_manager import load_plugins  # noqa: E402
from tlkit.recipe.loader import resolve  # noqa: E402
from tlkit.run.engine import run  # noqa: E402


def build_forms(plugins, data: Path, out: Path) -> dict[str, dict]:
    """The dataset sections of the four forms, the copies written under ``out`` from the folder loader's listing."""
    import datasets

    spec = plugins.datasets.get("imagefolder")
    listed = spec.load(spec.options(root=str(data)))
    with (out / "ants-bees.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split, name in (("train", "train"), ("test", "val")):
            writer.writerows([s.path.relative_to(data).as_posix(), listed.classes[s.label], name] for s in listed.splits[split])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(listed.classes))})
    parts = {}
    for split, name in (("train", "train"), ("test", "val")):
        rows = listed.splits[split]
        parts[name] = datasets.Dataset.from_dict(
            {"image": [{"bytes": s.path.read_bytes(), "path": s.path.name} for s in rows], "label": [s.label for s in rows]}, features=features
        )
    datasets.DatasetDict(parts).save_to_disk(str(out / "arrow"))
    for name, part in parts.items():
        part.to_parquet(str(out / "parquet" / "data" / f"{name}-00000-of-00001.parquet"))
    return {
        "folder": {"name": "imagefolder", "root": str(data), "test": "val"},
        "csv": {"name": "csv", "file": str(out / "ants-bees.csv"), "root": str(data), "test": "val"},
        "hf arrow": {"name": "hf_datasets", "root": str(out / "arrow"), "test": "val"},
        "hf parquet": {"name": "hf_datasets", "root": str(out / "parquet"), "test": "val"},
    }


def measure(plugins, dataset: dict, args: argparse.Namespace, out: Path) -> tuple[float, float, float]:
    """(listing seconds, extraction images/s without a cache, test accuracy)."""
    recipe = resolve(
        {"name": "bench", "dataset": dataset, "backbone": {"name": args.backbone},
         "extract": {"cache": False, "runtime": args.runtime, "workers": args.workers}, "head": {"name": "knn"}},
        plugins,
    )
    spec = plugins.datasets.get(dataset["name"])
    options = validate_options(spec.options, {k: v for k, v in dataset.items() if k != "name"}, "dataset")
    start = time.perf_counter()
    loaded = spec.load(options)
    listing = time.perf_counter() - start
    images = sum(len(s) for s in loaded.splits.values())
    result = run(recipe, out)
    extract_s = result.metrics.timings_s["extract"]
    return listing, images / extract_s, result.metrics.test_accuracy or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/hymenoptera_data"))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    plugins = load_plugins(entry_points=False)
    with tempfile.TemporaryDirectory() as tmp:
        forms = build_forms(plugins, args.data, Path(tmp))
        print(f"cpu: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"backbone {args.backbone}, runtime {args.runtime}, {args.workers} decoding workers, no feature cache, {args.repeat} repeat(s)")
        results: dict[str, list[tuple[float, float, float]]] = {form: [] for form in forms}
        for repeat in range(args.repeat):
            for form, dataset in forms.items():  # interleaved: a load spike hits every form alike
                results[form].append(measure(plugins, dataset, args, Path(tmp) / f"run-{repeat}-{form.replace(' ', '-')}"))
        base_list = statistics.median(r[0] for r in results["folder"])
        base_rate = statistics.median(r[1] for r in results["folder"])
        print("\n| form | listing s | listing / folder | extraction img/s | extraction / folder | test accuracy |")
        print("|---|---|---|---|---|---|")
        for form, rows in results.items():
            listing, rate = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
            print(f"| {form} | {listing:.3f} | {listing / base_list:.2f}x | {rate:.1f} | {rate / base_rate:.2f}x | {rows[0][2]:.4f} |")
        accuracies = {form: rows[0][2] for form, rows in results.items()}
        print(f"\nsame test accuracy in every form: {len(set(accuracies.values())) == 1}; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
