"""Open one image file as an RGB PIL image, fast and correctly, or say in a few words why not.

JPEGs much larger than the backbone's input are decoded at a reduced scale (PIL's ``draft``, the
DCT-domain downscale), which is several times faster than decoding every pixel and resizing. EXIF
orientation is applied; transparency is composited on a background colour; grayscale, palette,
CMYK and 16-bit images become 8-bit RGB; an animated image gives its first frame. Anything that
cannot be used raises :class:`BadImage` with a short reason, never another exception: this runs in
DataLoader worker processes, and one strange file must not take a worker (or the run) down.

Images above PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels) are
refused from their header alone, before a single pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag


class BadImage(Exception):
    """This file cannot be used as an image; the message says why, in a few words."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def open_rgb(path: Path | str | io.BytesIO, min_size: int | None = None, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Decode ``path`` as RGB; with ``min_size``, JPEG decoding may shrink while both sides stay >= it."""
    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS PIL only warns; make that a refusal too (raised by Image.open, before decoding).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if min_size and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img), background)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too large to decode safely ({_first_line(exc).split('.')[0]})") from exc
    except FileNotFoundError as exc:
        raise BadImage("file not found") from exc
    except IsADirectoryError as exc:
        raise BadImage("a folder, not a file") from exc
    except PermissionError as exc:
        raise BadImage("permission denied") from exc
    except Image.UnidentifiedImageError as exc:
        raise BadImage(_unidentified_reason(path)) from exc
    except MemoryError as exc:
        raise BadImage("not enough memory to decode") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise BadImage(f"corrupt or truncated image ({_first_line(exc)})") from exc


_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _unidentified_reason(path: Path | str | io.BytesIO) -> str:
    """Why PIL recognised nothing: an empty file, a damaged header of a known format, or not an image."""
    try:
        if isinstance(path, io.BytesIO):
            head = path.getvalue()[:8]
        else:
            with open(path, "rb") as fh:
                head = fh.read(8)
    except OSError:
        return "not an image file"
    if not head:
        return "empty file (0 bytes)"
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return f"corrupt {kind} image (unreadable header)"
    return "not an image file"


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        img = img.point(lambda v: v / 256).convert("L") if img.mode.startswith("I;16") else img.convert("F").point(lambda v: v / 256).convert("L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # palette or colour-key transparency (PNG tRNS, GIF)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


# --- Decoders: how a file becomes the backbone's input tensor -------------------------------------------
#
# ``reference`` is PIL decoding (draft for large JPEGs) and the backbone's own torchvision transform
# on the PIL image: the ground truth. ``fast`` decodes baseline RGB/grayscale JPEGs with simplejpeg
# (libjpeg-turbo at full scale: the same pixels as PIL's decode) and resizes the uint8 tensor with
# torch's antialiased kernels instead of PIL's, then crops and normalises in one pass. Measured on the
# ants/bees photos (benchmarks/decode.py) it is about 2x faster per image; its tensors differ from the
# reference by at most ~0.04 (normalised units, mean ~6e-5), far below what changes a prediction.
# Anything it does not handle the same way (EXIF rotation, CMYK, transparency, other formats, large
# JPEGs that PIL drafts, any decoding error) goes through ``open_rgb``, so every policy above holds.

DECODERS = ("auto", "reference", "fast")
FAST_DECODER = "fast-simplejpeg-torchresize-1"  # names the pixels in the feature-cache key; bump when they change


def fast_decoder_available() -> bool:
    """Whether the fast decoder's library (simplejpeg) is installed."""
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


class ReferencePipeline:
    """``open_rgb`` + the backbone's torchvision transform: path -> normalised (3, crop, crop) tensor."""

    def __init__(self, preprocessing: Any, background: tuple[int, int, int] = BACKGROUND) -> None:
        self.transform = preprocessing.transform()
        self.min_size = preprocessing.resize_size
        self.background = background

    def __call__(self, path: Path | str | io.BytesIO) -> torch.Tensor:
        return self.transform(open_rgb(path, min_size=self.min_size, background=self.background))


class FastPipeline(ReferencePipeline):
    """simplejpeg decoding and torch uint8 resizing where that gives the reference's pixels; else the reference."""

    def __init__(self, preprocessing: Any, background: tuple[int, int, int] = BACKGROUND) -> None:
        super().__init__(preprocessing, background)
        from torchvision.transforms import InterpolationMode

        self.resize_size = preprocessing.resize_size
        self.crop_size = preprocessing.crop_size
        self.interpolation = InterpolationMode(preprocessing.interpolation)
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(preprocessing.mean, dtype=torch.float32).view(3, 1, 1) / std

    def _pixels(self, path: Path | str | io.BytesIO) -> np.ndarray | None:
        """(H, W, 3) uint8 from simplejpeg, or ``None`` when the reference path must decode this file."""
        import simplejpeg

        if isinstance(path, io.BytesIO):  # an image inside a tar shard
            data = path.getvalue()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
        if not simplejpeg.is_jpeg(data):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # header only: size, mode, EXIF
                if img.mode not in ("RGB", "L") or img.getexif().get(_ORIENTATION, 1) != 1:
                    return None
                if min(img.size) >= 2 * self.resize_size:
                    return None  # PIL's draft decodes these at 1/2..1/8 scale: keep its pixels
        return simplejpeg.decode_jpeg(data, colorspace="RGB")

    def __call__(self, path: Path | str | io.BytesIO) -> torch.Tensor:  # type: ignore[override]
        from torchvision.transforms.v2 import functional as F

        try:
            pixels = self._pixels(path)
        except Exception:  # noqa: BLE001 - anything odd about the file: the reference path explains it (BadImage)
            pixels = None
        if pixels is None:
            return super().__call__(path)
        image = torch.from_numpy(pixels).permute(2, 0, 1)
        image = F.resize(image, [self.resize_size], interpolation=self.interpolation, antialias=True)
        image = F.center_crop(image, [self.crop_size])
        return image.float().mul_(self.scale).add_(self.shift)


DECODER_NAMES = ("reference", FAST_DECODER)


def pipeline_named(name: str, preprocessing: Any, background: tuple[int, int, int] = BACKGROUND) -> ReferencePipeline:
    """The pipeline a recorded decoder name (``ImagePipeline.decoder``, from :func:`decoding_pipeline`) stands for."""
    if name == FAST_DECODER:
        return FastPipeline(preprocessing, background)
    if name == "reference":
        return ReferencePipeline(preprocessing, background)
    raise ValueError(f"unknown decoder {name!r}; known: {', '.join(DECODER_NAMES)}")


def decoding_pipeline(decoder: str, preprocessing: Any, background: tuple[int, int, int] = BACKGROUND) -> tuple[ReferencePipeline, str]:
    """The pipeline for ``extract.decoder`` and the name of the pixels it makes (for the cache key).

    ``auto`` is ``fast`` where simplejpeg is installed and the preprocessing is a plain resize +
    centre crop (the only kind the fast path reproduces), else ``reference``.
    """
    plain = getattr(preprocessing, "crop_mode", "center") == "center"
    if decoder == "fast" and not plain:
        raise ValueError(f"the fast decoder reproduces only resize + centre crop, not crop_mode {preprocessing.crop_mode!r}")
    if decoder == "fast" or (decoder == "auto" and plain and fast_decoder_available()):
        return FastPipeline(preprocessing, background), FAST_DECODER
    return ReferencePipeline(preprocessing, background), "reference"
