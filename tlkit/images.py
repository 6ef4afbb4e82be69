"""Open one image file as an RGB PIL image, fast and correctly.

JPEGs much larger than the backbone's input are decoded at a reduced scale (PIL's ``draft``, the
DCT-domain downscale), which is several times faster than decoding every pixel and resizing. EXIF
orientation is applied; transparency is composited on a background colour; grayscale, palette,
CMYK and 16-bit images become 8-bit RGB. Files that are not images raise :class:`BadImage`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)


class BadImage(Exception):
    """This file cannot be used as an image; the message says why, in a few words."""


def open_rgb(path: Path | str, min_size: int | None = None, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Decode ``path`` as RGB; with ``min_size``, JPEG decoding may shrink while both sides stay >= it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if min_size and img.format == "JPEG":
                    img.draft("RGB", (min_size, min_size))
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img), background)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"too large to decode safely ({exc.args[0].split('.')[0]})") from exc
    except FileNotFoundError as exc:
        raise BadImage("file not found") from exc
    except Image.UnidentifiedImageError as exc:
        raise BadImage("not an image file" if Path(path).stat().st_size else "empty file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"corrupt or truncated image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        img = img.point(lambda v: v / 256).convert("L") if img.mode != "I" else img.convert("F").point(lambda v: v / 256).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")
