"""Time JPEG decoding + preprocessing per image on one core, and how far each path's pixels move.

Every path ends in the same normalised (3, crop, crop) float tensor. ``reference`` is today's path
(``tlkit.extract.decode.open_rgb`` + ``Preprocessing.transform()``: PIL decode with draft, torchvision
Resize/CenterCrop on the PIL image, ToImage/ToDtype/Normalize), the ground truth the others are
compared with (largest and mean absolute difference, in normalised units). Example::

    python benchmarks/decode.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlkit.contract.preprocessing import Preprocessing
from tlkit.extract import decode

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
PRE = Preprocessing(crop_size=224, resize_size=256, interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
MEAN = torch.tensor(PRE.mean).view(3, 1, 1)
STD = torch.tensor(PRE.std).view(3, 1, 1)


def normalise(hwc: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(hwc)).permute(2, 0, 1).float().div_(255)
    return x.sub_(MEAN).div_(STD)


def reference() -> Callable[[Path], torch.Tensor]:
    tf = PRE.transform()
    return lambda p: tf(decode.open_rgb(p, min_size=PRE.resize_size))


def pil_box(decode: Callable[[Path], Image.Image]) -> Callable[[Path], torch.Tensor]:
    """Resize only the source region that becomes the centre crop (PIL ``resize(box=...)``)."""

    def run(p: Path) -> torch.Tensor:
        img = decode(p)
        w, h = img.size
        short = min(w, h)
        rw, rh = (PRE.resize_size, int(PRE.resize_size * h / w)) if w <= h else (int(PRE.resize_size * w / h), PRE.resize_size)
        left, top = int(round((rw - PRE.crop_size) / 2.0)), int(round((rh - PRE.crop_size) / 2.0))
        sx, sy = w / rw, h / rh
        box = (left * sx, top * sy, (left + PRE.crop_size) * sx, (top + PRE.crop_size) * sy)
        del short
        return normalise(np.asarray(img.resize((PRE.crop_size, PRE.crop_size), Image.Resampling.BICUBIC, box=box)))

    return run


def pil_decode(p: Path) -> Image.Image:
    return decode.open_rgb(p, min_size=PRE.resize_size)


def simplejpeg_decode(p: Path) -> Image.Image:
    import simplejpeg

    data = p.read_bytes()
    if not simplejpeg.is_jpeg(data):
        return pil_decode(p)
    return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=PRE.resize_size, min_width=PRE.resize_size))


def tensor_resize(decode: Callable[[Path], Image.Image]) -> Callable[[Path], torch.Tensor]:
    from torchvision.transforms.v2 import functional as F

    def run(p: Path) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(decode(p))).permute(2, 0, 1)
        x = F.center_crop(F.resize(x, [PRE.resize_size], interpolation=F.InterpolationMode.BICUBIC, antialias=True), [PRE.crop_size])
        return x.float().div_(255).sub_(MEAN).div_(STD)

    return run


def cv2_resize(flag_name: str) -> Callable[[Path], torch.Tensor]:
    import cv2
    import simplejpeg

    flag = getattr(cv2, flag_name)

    def run(p: Path) -> torch.Tensor:
        data = p.read_bytes()
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=PRE.resize_size, min_width=PRE.resize_size) if simplejpeg.is_jpeg(data) else np.asarray(pil_decode(p))
        h, w = arr.shape[:2]
        rw, rh = (PRE.resize_size, int(PRE.resize_size * h / w)) if w <= h else (int(PRE.resize_size * w / h), PRE.resize_size)
        arr = cv2.resize(arr, (rw, rh), interpolation=flag)
        left, top = int(round((rw - PRE.crop_size) / 2.0)), int(round((rh - PRE.crop_size) / 2.0))
        return normalise(arr[top : top + PRE.crop_size, left : left + PRE.crop_size])

    return run


PATHS: dict[str, Callable[[], Callable[[Path], torch.Tensor]]] = {
    "reference (PIL + torchvision on PIL)": reference,
    "tlkit fast (decode.FastPipeline)": lambda: decode.FastPipeline(PRE),
    "PIL decode + PIL resize(box=crop)": lambda: pil_box(pil_decode),
    "PIL decode + torch uint8 resize": lambda: tensor_resize(pil_decode),
    "simplejpeg (7/8 DCT scaling) + torch uint8 resize": lambda: tensor_resize(simplejpeg_decode),
    "simplejpeg + OpenCV INTER_AREA": lambda: cv2_resize("INTER_AREA"),
    "simplejpeg + OpenCV INTER_CUBIC": lambda: cv2_resize("INTER_CUBIC"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        del PATHS["simplejpeg + OpenCV INTER_AREA"], PATHS["simplejpeg + OpenCV INTER_CUBIC"]
    files = sorted(p for p in args.data.rglob("*.jpg"))
    print(f"{len(files)} JPEGs from {args.data}; 1 thread; load average {os.getloadavg()[0]:.2f}")
    print(f"cpu: {_cpu()}")
    truth = [PATHS["reference (PIL + torchvision on PIL)"]()(p) for p in files]
    runners = {name: make() for name, make in PATHS.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeat):  # interleaved, so each path sees the same machine load
        for name, run in runners.items():
            start = time.perf_counter()
            for p in files:
                run(p)
            times[name].append(1000 * (time.perf_counter() - start) / len(files))
    base = statistics.median(times["reference (PIL + torchvision on PIL)"])
    print("| path | ms/image (median) | per repeat | vs reference | max abs diff | mean abs diff |")
    print("|---|---|---|---|---|---|")
    for name, run in runners.items():
        diffs = [(run(p) - t).abs() for p, t in zip(files, truth)]
        med = statistics.median(times[name])
        print(f"| {name} | {med:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} | {base / med:.2f}x | "
              f"{max(float(d.max()) for d in diffs):.4f} | {statistics.mean(float(d.mean()) for d in diffs):.5f} |")
    print(f"load average now {os.getloadavg()[0]:.2f}")


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16")]
    return f"{model}; {' '.join(wanted)}"


if __name__ == "__main__":
    main()
