"""Benchmark tlkit's feature extraction, per runtime, against the plain PyTorch loop of the transfer-learning tutorial.

In one process, on the same images and the same backbone, each repeat times:

(a) plain:    torchvision ``ImageFolder`` + Resize(256)/CenterCrop(224)/ToTensor/Normalize,
              ``DataLoader(batch_size=32)``, forward under ``torch.no_grad`` (the tutorial's loop);
(b) tlkit:    ``tlkit.extract.features.extract`` with the cache off, per runtime (torch, onnxruntime, openvino),
              with the chosen decoder (fast by default): images/s end to end, decoding included;
(c) forward:  each runtime's forward pass alone on pre-made batches of real preprocessed images,

and prints per runtime: the medians, the ratios to the plain loop (per repeat: same machine load),
the agreement of its features with eager fp32 (lowest per-image cosine, largest absolute difference)
twice: on the same decoder (what the runtime changes) and on the reference decoder (runtime and
decoder together), the conversion time (0 when a stored converted model was reused) and
the peak RSS. Examples::

    python benchmarks/extract.py --backbone efficientnet_lite0 --repeat 3
    python benchmarks/extract.py --backbone resnet18 --weights none --repeat 3
    python benchmarks/extract.py --backbone efficientnet_lite0 --precision bf16 --runtimes openvino --repeat 3
    python benchmarks/extract.py --only tlkit --runtimes openvino --generate 3000 --backbone resnet18 --weights none

``--only tlkit`` runs (b) alone so the peak RSS is tlkit's. Generated data sets are 640x480 JPEGs,
kept under the system temp folder and reused. Converted models are stored under ``--model-cache``
(default: a folder under the system temp folder); ``--fresh`` converts again.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_line as _cpu_line  # type: ignore[import-not-found]  # benchmarks/machine.py
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import datasets, transforms

from tlkit.contract.plugin_manager import load_plugins
from tlkit.contract.weights_request import WeightsRequest
from tlkit.extract.decode import decoding_pipeline, pipeline_named
from tlkit.extract.features import default_workers, extract, prepare_model
from tlkit.extract.pipeline import ImagePipeline, ImageSettings
from tlkit.extract.runtimes.choice import agreement

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


def generate(n: int, size: tuple[int, int] = (640, 480)) -> Path:
    """``n`` smooth, photo-like JPEGs in two class folders (reused when already there)."""
    root = Path(tempfile.gettempdir()) / f"tlkit-bench-{n}-{size[0]}x{size[1]}"
    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        image = small.resize(size, Image.Resampling.BICUBIC)
        noise = rng.normal(0, 6, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)
    done.touch()
    return root


def image_folder(root: Path, transform: object) -> torch.utils.data.Dataset:
    """``ImageFolder`` on ``root``, or on each split folder below it (ants/bees has train/ and val/)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs and all(any(q.is_dir() for q in s.iterdir()) for s in subdirs):
        return ConcatDataset([datasets.ImageFolder(str(s), transform=transform) for s in subdirs])
    return datasets.ImageFolder(str(root), transform=transform)


def sample_paths(dataset: torch.utils.data.Dataset) -> list[Path]:
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    return [Path(path) for part in parts for path, _ in part.samples]


def plain_loop(model: torch.nn.Module, root: Path) -> tuple[float, int]:
    """The tutorial's loop, verbatim in spirit: decode in the main process, NCHW, no_grad."""
    tf = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    loader = DataLoader(image_folder(root, tf), batch_size=32)
    n = 0
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - start), n


def forward_only(forward, batch: torch.Tensor, images: int) -> float:
    """Images/s of one runtime's forward pass alone on a pre-made batch (decoding excluded)."""
    batches = max(3, images // len(batch))
    forward(batch)
    start = time.perf_counter()
    for _ in range(batches):
        forward(batch)
    return batches * len(batch) / (time.perf_counter() - start)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding workers): work done, whatever the load."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child




def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", help="a tlkit backbone name")
    parser.add_argument("--weights", default=None, help="'none' for random weights, a file, or default")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"])
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino", help="comma-separated runtimes to compare; runtime:precision overrides --precision")
    parser.add_argument("--decoder", default="auto", choices=["auto", "reference", "fast"])
    parser.add_argument("--data", type=Path, default=None, help=f"image folder (default {DEFAULT_DATA})")
    parser.add_argument("--generate", type=int, default=None, help="use N generated 640x480 JPEGs instead")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help=f"decoding workers (default {default_workers()})")
    parser.add_argument("--threads", type=int, default=None, help="torch/runtime threads of the main process")
    parser.add_argument("--repeat", type=int, default=1, help="measure everything this many times, interleaved")
    parser.add_argument("--only", choices=["tlkit", "plain", "forward"], default=None)
    parser.add_argument("--model-cache", type=Path, default=Path(tempfile.gettempdir()) / "tlkit-bench-models")
    parser.add_argument("--fresh", action="store_true", help="forget stored converted models first")
    return parser.parse_args()


def build_runtimes(args, spec, model, pipeline, paths) -> dict:
    """Each requested runtime, chosen (converted or loaded) exactly as a run would."""
    from tlkit.extract.runtimes import choose_runtime
    from tlkit.extract.runtimes.stage import CALIBRATION_IMAGES, PROBE_IMAGES, _decoded

    if args.fresh:
        shutil.rmtree(args.model_cache, ignore_errors=True)
    found = {}
    crop = pipeline.preprocessing.crop_size
    for name in args.runtimes.split(","):
        requested, _, precision = name.partition(":")  # "openvino:bf16" overrides --precision for one entry
        start = time.perf_counter()
        runtime = choose_runtime(
            model, requested=requested, precision=precision or args.precision, device=torch.device("cpu"),
            identity={"backbone": args.backbone, "options": {}}, input_shape=(3, crop, crop),
            probe=lambda: _decoded(paths, pipeline, PROBE_IMAGES),
            calibration=lambda: _decoded(paths[:: max(1, len(paths) // CALIBRATION_IMAGES)], pipeline, CALIBRATION_IMAGES),
            cache_root=args.model_cache, threads=args.threads,
        )
        print(f"{name:12s} ready in {time.perf_counter() - start:6.2f} s: {runtime.choice.note or 'eager'}", flush=True)
        found[name] = runtime
    return found


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = generate(args.generate) if args.generate else (args.data or DEFAULT_DATA)
    spec = load_plugins(entry_points=False).backbones.get(args.backbone)
    torch.manual_seed(0)
    built = spec.build(WeightsRequest.parse(args.weights), spec.options())
    preprocessing = spec.resolve_preprocessing()
    plain_model = copy.deepcopy(built.model).eval() if args.only in (None, "plain") else None
    model = prepare_model(built.model, torch.device("cpu"))
    paths = sample_paths(image_folder(root, None))
    workers = default_workers() if args.workers is None else args.workers
    _, decoder = decoding_pipeline(args.decoder, preprocessing)
    pipeline = ImagePipeline(ImageSettings(), preprocessing, "fp32", decoder)
    load = os.getloadavg()
    print(f"backbone {args.backbone} (weights {built.weights_id[:12]}), precision {args.precision}, decoder {decoder}, {len(paths)} images from {root}")
    print(f"cpu: {cpu_line()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {workers} workers, batch {args.batch_size}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, load average {load[0]:.2f} {load[1]:.2f}", flush=True)
    runtimes = build_runtimes(args, spec, model, pipeline, paths)
    references: dict[str, torch.Tensor] = {}
    if args.only is None:  # eager fp32: on the run's decoder (the runtime's own effect) and on the reference decoder (the ground truth)
        references["same decoder"] = extract(model, paths, pipeline, batch_size=args.batch_size, workers=workers).features
        references["reference decoder"] = extract(model, paths, ImagePipeline(ImageSettings(), preprocessing), batch_size=args.batch_size, workers=workers).features
    batch = torch.stack([pipeline_named(decoder, preprocessing)(p) for p in paths[: args.batch_size]])
    if plain_model is not None:
        with torch.no_grad():  # warm the plain model up (allocator, oneDNN primitives) outside the timings
            plain_model(torch.randn(2, 3, 224, 224))
    plain, e2e, fwd, agree = [], {n: [] for n in runtimes}, {n: [] for n in runtimes}, {}
    # Each repeat measures everything back to back, so a ratio compares runs under the same machine load.
    for r in range(args.repeat):
        if args.only in (None, "plain"):
            rate, _n = plain_loop(plain_model, root)
            plain.append(rate)
            print(f"[{r + 1}] (a) plain loop            {rate:8.1f} img/s", flush=True)
        for name, runtime in runtimes.items():
            if args.only in (None, "forward"):
                fwd[name].append(forward_only(runtime.forward, batch, len(paths) // 2))
                print(f"[{r + 1}] (c) {name:12s} forward {fwd[name][-1]:8.1f} img/s", flush=True)
            if args.only in (None, "tlkit"):
                cpu, start = cpu_seconds(), time.perf_counter()
                result = extract(model, paths, pipeline, batch_size=args.batch_size, workers=workers, forward=runtime.forward)
                e2e[name].append(len(result.kept) / (time.perf_counter() - start))
                per_image = 1000 * (cpu_seconds() - cpu) / len(result.kept)
                print(f"[{r + 1}] (b) {name:12s} tlkit   {e2e[name][-1]:8.1f} img/s ({per_image:.0f} CPU-ms/img)", flush=True)
                agree[name] = {what: agreement(features, result.features) for what, features in references.items()}
    report(args, runtimes, plain, e2e, fwd, agree)


def report(args, runtimes, plain, e2e, fwd, agree) -> None:
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    ratio = lambda xs: statistics.median([x / p for x, p in zip(xs, plain)]) if xs and plain else float("nan")  # noqa: E731
    torch_fwd = fwd.get("torch") or []
    print()
    print(f"| runtime (--precision {args.precision}) | end to end img/s | forward img/s | end to end / plain | forward / plain | forward / eager forward | "
          "cosine vs eager fp32, same decoder (min) | max abs diff | cosine vs eager fp32 on the reference decoder (min) | max abs diff | conversion s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    if plain:
        print(f"| plain PyTorch loop | {med(plain):.1f} | | 1.00x | | | | | | | |")
    for name, runtime in runtimes.items():
        c = runtime.choice
        unknown = (float("nan"), float("nan"))
        (cos, diff), (ref_cos, ref_diff) = (agree.get(name, {}).get(what, unknown) for what in ("same decoder", "reference decoder"))
        vs_eager = statistics.median([f / t for f, t in zip(fwd[name], torch_fwd)]) if torch_fwd and fwd[name] else float("nan")
        label = f"{name} (ran {c.runtime} {c.precision})" if c.runtime != name.partition(":")[0] else f"{c.runtime} {c.precision}"
        print(f"| {label} | {med(e2e[name]):.1f} | {med(fwd[name]):.1f} | {ratio(e2e[name]):.2f}x | {ratio(fwd[name]):.2f}x | {vs_eager:.2f}x | "
              f"{cos:.6f} | {diff:.1e} | {ref_cos:.6f} | {ref_diff:.1e} | {c.conversion_s:.2f} |")
    per_repeat = {name: [f"{x / p:.2f}" for x, p in zip(e2e[name], plain)] for name in runtimes}
    print(f"per-repeat end-to-end ratios: {per_repeat}")
    own, child = peak_rss_mb()
    print(f"peak RSS {own:.1f} MB (this process), {child:.1f} MB (largest worker); load average now {os.getloadavg()[0]:.2f}")
    sys.stdout.flush()


def cpu_line() -> str:
    return _cpu_line(load=False)


if __name__ == "__main__":
    main()
