"""Counts and sizes: classes missing from a split or far smaller than the others, and odd image sizes.

Image sizes come from the file headers (``PIL.Image.open`` reads the header and decodes nothing),
and only files within the size bound are opened, so a folder of huge or hostile files costs a
header read each. Shard members (no file of their own) are left out.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from tlkit.audit.findings import AuditInputs, Finding

MAX_HEADER_FILE_BYTES = 1 << 30  # files larger than this are not opened (the decoder refuses them anyway)
_HEADER_ONLY = threading.Lock()  # PIL's bomb limit is process-wide: lifted for one header read at a time


def find_class_sizes(inputs: AuditInputs) -> list[Finding]:
    """A class with no images in a split, or fewer than ``min_class_fraction`` of the split's median class."""
    fraction = float(inputs.options.get("min_class_fraction", 0.2))
    findings = []
    for split, data in inputs.splits.items():
        counts = np.bincount(data.y.astype(np.int64), minlength=len(inputs.classes))
        median = float(np.median(counts)) if len(counts) else 0.0
        for c, name in enumerate(inputs.classes):
            if counts[c] == 0:
                detail, score = f"no {split} image of class {name}", 1.0
            elif counts[c] < fraction * median:
                detail, score = f"{counts[c]} {split} images of class {name}, against a median of {median:g} per class", 1.0 - counts[c] / median
            else:
                continue
            findings.append(Finding(kind="class_size", paths=("",), splits=(split,), score=float(score), given_label=name, detail=detail))
    return findings


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when it cannot be read (the decoder says why elsewhere)."""
    from PIL import Image

    try:
        if not path.is_file() or path.stat().st_size > MAX_HEADER_FILE_BYTES:
            return None  # is_file: no FIFO or device is opened
        with _HEADER_ONLY, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: only the header is read
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # a bomb's header is what we want to report
            try:
                with Image.open(path) as image:
                    width, height = image.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Exception:  # noqa: BLE001 - any unreadable header just means no size finding
        return None
    return int(width), int(height)


def _size_problem(width: int, height: int, inputs: AuditInputs) -> tuple[str, float] | None:
    min_side = float(inputs.options.get("min_image_side", 32))
    max_pixels = float(inputs.options.get("max_image_pixels", 50_000_000))
    max_aspect = float(inputs.options.get("max_aspect_ratio", 4.0))
    aspect = max(width, height) / max(min(width, height), 1)
    if min(width, height) < min_side:
        return f"tiny: {width} x {height} pixels (smaller side under {min_side:g})", min_side / max(min(width, height), 1)
    if width * height > max_pixels:
        return f"huge: {width} x {height} pixels (over {max_pixels:g})", width * height / max_pixels
    if aspect > max_aspect:
        return f"aspect ratio {aspect:.1f}:1 ({width} x {height}; over {max_aspect:g}:1)", aspect / max_aspect
    return None


def find_image_sizes(inputs: AuditInputs) -> list[Finding]:
    """Tiny or huge images and extreme aspect ratios, from each file's header."""
    findings = []
    for split, data in inputs.splits.items():
        for i, file in enumerate(data.files):
            size = header_size(file) if file is not None else None
            problem = _size_problem(*size, inputs) if size else None
            if problem is not None:
                findings.append(
                    Finding(
                        kind="image_size", paths=(data.paths[i],), splits=(split,), score=float(problem[1]),
                        given_label=inputs.classes[int(data.y[i])], detail=problem[0],
                    )
                )
    return findings
