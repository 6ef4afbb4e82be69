"""Small real pictures for the near-duplicate tests: structure a perceptual hash can see (gradient,
shapes, text), their copies (resized, re-encoded, cropped, mirrored), look-alikes (same colours,
other layout), and the audit's inputs for a folder of them with features from the pixels (a colour
histogram: like a backbone's features, near for copies and look-alikes alike, blind to a flip)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from tlkit.audit.findings import AuditInputs, SplitData

KINDS = ("resize", "jpeg40", "crop10", "flip")


def picture(seed: int, layout: int | None = None, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A picture whose colours follow ``seed`` and whose shapes' places follow ``layout`` (default: ``seed``)."""
    colours = random.Random(seed)
    places = random.Random(seed if layout is None else 10_000 + layout)
    w, h = size
    top, bottom = np.array([colours.randint(0, 255) for _ in range(3)]), np.array([colours.randint(0, 255) for _ in range(3)])
    ramp = np.linspace(0, 1, h)[:, None, None]
    image = Image.fromarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    palette = [tuple(colours.randint(0, 255) for _ in range(3)) for _ in range(4)]
    for i in range(7):
        x, y = places.randint(-10, w - 20), places.randint(-10, h - 20)
        box = (x, y, x + places.randint(15, 60), y + places.randint(15, 50))
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=palette[i % len(palette)])
    draw.text((places.randint(0, w - 40), places.randint(0, h - 15)), f"#{seed}", fill=palette[0])
    return image


def copy_of(image: Image.Image, kind: str, rng: random.Random) -> tuple[Image.Image, int]:
    """The copy ``kind`` makes of ``image`` and the JPEG quality to save it at."""
    w, h = image.size
    if kind == "resize":
        return image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR), 90
    if kind == "jpeg40":
        return image, 40
    if kind == "crop10":
        cw, ch = round(w * 0.9), round(h * 0.9)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return image.crop((x, y, x + cw, y + ch)), 90
    if kind == "flip":
        return ImageOps.mirror(image), 90
    raise ValueError(kind)


def save(image: Image.Image, path: Path, quality: int = 90) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=quality)
    return path.name


def colour_features(path: Path) -> np.ndarray:
    """A 4 x 4 x 4 colour histogram of the image's pixels (64 floats)."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int64) // 64
    codes = pixels[..., 0] * 16 + pixels[..., 1] * 4 + pixels[..., 2]
    return np.bincount(codes.ravel(), minlength=64).astype(np.float32) / codes.size


def inputs_for(root: Path, layout: Mapping[str, Sequence[tuple[str, int]]], classes: tuple[str, ...] = ("a", "b"), **options: float) -> AuditInputs:
    """The audit's inputs for files under ``root``: per split, ``(relative path, label)`` pairs; digests of the bytes now."""
    splits = {}
    for split, items in layout.items():
        files = tuple(root / rel for rel, _ in items)
        splits[split] = SplitData(
            x=np.stack([colour_features(f) for f in files]),
            y=np.array([label for _, label in items]),
            paths=tuple(rel for rel, _ in items),
            files=files,
            digests=tuple(hashlib.sha256(f.read_bytes()).hexdigest() for f in files),
        )
    return AuditInputs(classes=classes, splits=splits, root=root, options=dict(options))


def planted_folder(root: Path, per_kind: int = 5, originals: int = 24, seed: int = 0) -> tuple[dict[str, list[tuple[str, int]]], set[frozenset[str]]]:
    """``originals`` pictures per split, and ``per_kind`` copies of each kind placed in the other split.

    Returns the layout for :func:`inputs_for` and the planted pairs (relative paths).
    """
    rng = random.Random(seed)
    layout: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for s, split in enumerate(layout):
        for i in range(originals):
            rel = f"{split}/{i % 2}/p{i}.jpg"
            save(picture(1000 * s + i), root / rel)
            layout[split].append((rel, i % 2))
    planted = set()
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            source, target = ("train", "test") if i % 2 == 0 else ("test", "train")
            rel, label = layout[source][k * per_kind + i]
            with Image.open(root / rel) as img:
                image, quality = copy_of(img.convert("RGB"), kind, rng)
            copy_rel = f"{target}/{label}/copy-{kind}-{i}.jpg"
            save(image, root / copy_rel, quality)
            layout[target].append((copy_rel, label))
            planted.add(frozenset((rel, copy_rel)))
    return layout, planted
