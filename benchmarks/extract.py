"""Benchmark tlkit's feature extraction against the plain PyTorch loop of the transfer-learning tutorial.

In one process, on the same images and the same backbone, it times:

(a) plain:   torchvision ``ImageFolder`` + Resize(256)/CenterCrop(224)/ToTensor/Normalize,
             ``DataLoader(batch_size=32)``, forward under ``torch.no_grad`` (the tutorial's loop);
(b) tlkit:   ``tlkit.features.extract`` with the cache off (workers, JPEG draft, channels-last,
             inference mode, the chosen precision);
(c) forward: the backbone alone on pre-made tensors with tlkit's settings: the compute limit,

and prints images/s for each, tlkit/plain and tlkit/forward, and the peak RSS of this process and of
its largest child (a decoding worker). Examples::

    python benchmarks/extract.py --backbone efficientnet_lite0
    python benchmarks/extract.py --backbone resnet18 --weights none --precision bf16
    python benchmarks/extract.py --only tlkit --generate 3000 --backbone resnet18 --weights none

``--only tlkit`` runs (b) alone so the peak RSS is tlkit's. Generated data sets are 640x480 JPEGs,
kept under the system temp folder and reused.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader
from torchvision import datasets, transforms

from tlkit.weights import WeightsRequest
from tlkit.pipeline import ImagePipeline, ImageSettings
from tlkit.features import default_workers, extract, prepare_model
from tlkit.plugins import load_plugins

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


def forward_only(model: torch.nn.Module, precision: str, images: int, batch_size: int, crop: int) -> float:
    """Images/s of the prepared backbone alone on random tensors (tlkit's settings)."""
    from tlkit.features import autocast_context

    x = torch.randn(batch_size, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    batches = max(3, images // batch_size)
    with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
        model(x)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
    return batches * batch_size / (time.perf_counter() - start)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding workers): work done, whatever the load."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", help="a tlkit backbone name")
    parser.add_argument("--weights", default=None, help="'none' for random weights, a file, or default")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--data", type=Path, default=None, help=f"image folder (default {DEFAULT_DATA})")
    parser.add_argument("--generate", type=int, default=None, help="use N generated 640x480 JPEGs instead")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help=f"decoding workers (default {default_workers()})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    parser.add_argument("--repeat", type=int, default=1, help="alternate plain and tlkit this many times")
    parser.add_argument("--only", choices=["tlkit", "plain", "forward"], default=None)
    args = parser.parse_args()

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
    load = os.getloadavg()
    print(f"backbone {args.backbone} (weights {built.weights_id[:12]}), precision {args.precision}, {len(paths)} images from {root}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {workers} workers, batch {args.batch_size}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, load average {load[0]:.2f} {load[1]:.2f}")

    plain_rates: list[float] = []
    tlkit_rates: list[float] = []
    forward_rates: list[float] = []
    if plain_model is not None:
        with torch.no_grad():  # warm the plain model up (allocator, oneDNN primitives) outside the timings
            plain_model(torch.randn(2, 3, 224, 224))
    # Each repeat measures all three back to back, so a ratio compares runs under the same machine load.
    for _ in range(args.repeat):
        if args.only in (None, "forward"):
            rate = forward_only(model, args.precision, len(paths) // 2, args.batch_size, preprocessing.crop_size)
            forward_rates.append(rate)
            print(f"(c) forward only       {rate:8.1f} img/s", flush=True)
        if args.only in (None, "plain"):
            assert plain_model is not None
            cpu = cpu_seconds()
            rate, n = plain_loop(plain_model, root)
            plain_rates.append(rate)
            print(f"(a) plain loop         {rate:8.1f} img/s  ({n} images, {1000 * (cpu_seconds() - cpu) / n:.0f} CPU-ms/img)", flush=True)
        if args.only in (None, "tlkit"):
            cpu = cpu_seconds()
            start = time.perf_counter()
            result = extract(model, paths, ImagePipeline(ImageSettings(), preprocessing, args.precision), batch_size=args.batch_size, workers=workers)
            rate = len(result.kept) / (time.perf_counter() - start)
            tlkit_rates.append(rate)
            per_image = 1000 * (cpu_seconds() - cpu) / len(result.kept)
            print(f"(b) tlkit, cache off   {rate:8.1f} img/s  ({len(result.kept)} images, {per_image:.0f} CPU-ms/img)", flush=True)
    if plain_rates and tlkit_rates:
        ratios = [t / p for p, t in zip(plain_rates, tlkit_rates)]
        print(f"tlkit / plain          {statistics.median(ratios):8.2f}x  (per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    if forward_rates and tlkit_rates:
        shares = [100 * t / f for f, t in zip(forward_rates, tlkit_rates)]
        print(f"tlkit / forward only   {statistics.median(shares):8.1f}%  (per repeat: {', '.join(f'{r:.0f}%' for r in shares)})")
    own, child = peak_rss_mb()
    load = os.getloadavg()
    print(f"peak RSS               {own:8.1f} MB (this process), {child:.1f} MB (largest worker); load average now {load[0]:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
