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

import warnings
from pathlib import Path

from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)


class BadImage(Exception):
    """This file cannot be used as an image; the message says why, in a few words."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def open_rgb(path: Path | str, min_size: int | None = None, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
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


def _unidentified_reason(path: Path | str) -> str:
    """Why PIL recognised nothing: an empty file, a damaged header of a known format, or not an image."""
    try:
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
