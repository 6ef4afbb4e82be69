"""Perceptual fingerprints of an image: is this picture a resized, re-encoded, cropped or mirrored copy of that one?

Two 64-bit perceptual hashes, computed as the ``imagehash`` package does (the test checks them bit for
bit on the same pixels): pHash (32 x 32 grayscale, 2-D DCT, the 8 x 8 lowest frequencies against their
median) and dHash (9 x 8 grayscale, is each pixel brighter than its left neighbour). They are written
here on numpy so that the audit, on by default, needs no extra package, and so that the many windows
below are shrunk (by area averaging, from the image squashed to a 128 x 128 grayscale square) and
hashed in a few matrix products instead of some 170 PIL calls.

A whole-image hash survives resizing, JPEG re-encoding and (compared with the mirrored image) a flip,
but not a crop: cutting 10% off the sides moves it as far as an unrelated photo. So each image also
gets the hashes of sub-windows (85-95% of the sides, on a 5 x 5 grid of places, and the same of the
mirrored image): a crop of A matches one of A's windows. Two images are copies when the whole of one
is within a few bits of some window of the other (:func:`distance`). Requiring both hashes to agree
is what keeps look-alikes apart: on ants/bees, planted copies were at most 10 of the 128 bits apart,
the nearest other candidate pair 25 (benchmarks/audit_duplicates.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

THUMB_SIDE = 128  # the square the image is resized to before windows are cut (a hash sees 32 x 32)
HASH_SIDE = 32
LOW = 8
# (width fraction, height fraction) of the windows; each placed at the grid of OFFSETS (a fraction of the room left).
SCALES = ((1.0, 1.0), (0.95, 0.95), (0.9, 0.9), (0.85, 0.85), (0.9, 1.0), (1.0, 0.9))
OFFSETS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Fingerprint:
    """The whole image's (pHash, dHash) and those of all its windows, the mirror image's included (the whole first)."""

    whole: np.ndarray  # (2,) uint64
    windows: np.ndarray  # (2 x windows, 2) uint64


@cache
def _dct_rows() -> np.ndarray:
    """The 8 lowest rows of the (unnormalised) DCT-II basis, as scipy's ``dct(type=2)``: a constant factor does not move a median."""
    n = np.arange(HASH_SIDE)
    return np.cos(np.pi * (2 * n[None, :] + 1) * np.arange(LOW)[:, None] / (2 * HASH_SIDE))


def phash_bits(pixels: np.ndarray) -> np.ndarray:
    """pHashes of a stack of (B, 32, 32) grayscale arrays, as (B,) uint64 (bit order of ``imagehash``)."""
    dct = _dct_rows()
    low = (dct @ pixels.astype(np.float64) @ dct.T).reshape(len(pixels), LOW * LOW)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).ravel()


def area_matrix(start: int, length: int, size: int, out: int) -> np.ndarray:
    """(out, size) weights that average pixels ``start .. start+length`` of a line of ``size`` into ``out`` cells (box filter)."""
    edges = start + length * np.arange(out + 1) / out
    left, right = edges[:-1, None], edges[1:, None]
    pixel = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(right, pixel + 1) - np.maximum(left, pixel), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


@cache
def _plan(out_w: int, out_h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct row and column spans of the windows as averaging matrices, and each window's pair of spans.

    Windows share spans (the same rows at five places across), so every (row span, column span)
    combination comes out of two matrix products, from which the windows are picked.
    """
    boxes = window_boxes(THUMB_SIDE, THUMB_SIDE)
    ys = sorted({(y0, y1) for _, y0, _, y1 in boxes})
    xs = sorted({(x0, x1) for x0, _, x1, _ in boxes})
    rows = np.concatenate([area_matrix(y0, y1 - y0, THUMB_SIDE, out_h) for y0, y1 in ys]).astype(np.float32)
    cols = np.concatenate([area_matrix(x0, x1 - x0, THUMB_SIDE, out_w).T for x0, x1 in xs], axis=1).astype(np.float32)
    pick_y = np.array([ys.index((y0, y1)) for _, y0, _, y1 in boxes])
    pick_x = np.array([xs.index((x0, x1)) for x0, _, x1, _ in boxes])
    return rows, cols, pick_y, pick_x


def _resampled(gray: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Every window (:func:`window_boxes`) of the square thumbnail ``gray`` shrunk to ``out_h x out_w`` by area averaging."""
    rows, cols, pick_y, pick_x = _plan(out_w, out_h)
    every = (rows @ gray @ cols).reshape(len(rows) // out_h, out_h, cols.shape[1] // out_w, out_w)
    return every.transpose(0, 2, 1, 3)[pick_y, pick_x]


def dhash_bits(pixels: np.ndarray) -> np.ndarray:
    """Difference hashes (dHash, as ``imagehash``) of a stack of (B, 8, 9) arrays: is each pixel brighter than its left neighbour."""
    return np.packbits((pixels[:, :, 1:] > pixels[:, :, :-1]).reshape(len(pixels), LOW * LOW), axis=1).view(">u8").astype(np.uint64).ravel()


@cache
def window_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The sub-windows of a ``width x height`` thumbnail that a crop may match (the whole first).

    The grid of offsets is symmetric, so the windows of the mirrored image are these windows mirrored.
    """
    boxes = []
    for fx, fy in SCALES:
        w, h = max(1, round(width * fx)), max(1, round(height * fy))
        for ox in OFFSETS if w < width else (0.0,):
            for oy in OFFSETS if h < height else (0.0,):
                x0, y0 = round((width - w) * ox), round((height - h) * oy)
                boxes.append((x0, y0, x0 + w, y0 + h))
    return boxes


def fingerprint(image: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded image (any mode): pHash and dHash of each window and of its mirror image."""
    # Squashed to a square: the hashes see 32 x 32 and 9 x 8 anyway, and windows are fractions of the sides.
    gray = image.convert("L").resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(gray, dtype=np.float32)
    small = _resampled(pixels, HASH_SIDE, HASH_SIDE)
    tiny = _resampled(pixels, LOW + 1, LOW)
    small, tiny = np.concatenate([small, small[:, :, ::-1]]), np.concatenate([tiny, tiny[:, :, ::-1]])
    hashes = np.stack([phash_bits(small), dhash_bits(tiny)], axis=1)
    return Fingerprint(whole=hashes[0], windows=hashes)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x) if hasattr(np, "bitwise_count") else np.array([bin(int(v)).count("1") for v in x.ravel()]).reshape(x.shape)


def distance(a: Fingerprint, b: Fingerprint) -> int:
    """Bits between the whole of one image and the nearest window of the other (either way round, mirrors included).

    Of 128 bits (pHash + dHash of the same window). On ants/bees, planted resized, re-encoded, cropped
    and mirrored copies were at most 10 apart; unrelated photos
    were 25 or more apart.
    """
    return int(min(_popcount(a.windows ^ b.whole).sum(axis=1).min(), _popcount(b.windows ^ a.whole).sum(axis=1).min()))


def fingerprint_bytes(data: bytes) -> Fingerprint:
    """The fingerprint of encoded image bytes, decoded by tlkit's one decoder (bomb limit, EXIF, modes)."""
    from tlkit.extract.decode import open_rgb

    # JPEGs decode at 1/2..1/8 scale while both sides stay >= half the thumbnail: a 500 x 375 photo at
    # 125 x 94, several times faster than full size, and the thumbnail is no smaller than it would be anyway.
    return fingerprint(open_rgb(io.BytesIO(data), min_size=THUMB_SIDE // 2))
