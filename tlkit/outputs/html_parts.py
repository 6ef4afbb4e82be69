"""The pieces every tlkit HTML page is built from: escaping, tables, ``data:`` URIs and thumbnails.

Pages are self-contained (images embedded, styling inline, no external URL), so they open from the
run directory or an e-mail attachment. A thumbnail decodes through :func:`tlkit.extract.decode.open_rgb`,
the decoder of the run itself, with its limits (a decompression bomb is refused from its header),
and only regular files: a file that cannot be shown becomes a reason in words, never an exception.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

THUMB_STYLE = """
.sheet { display: flex; flex-wrap: wrap; gap: 6px; margin: 0.3em 0 1em; }
.cell { width: 132px; font-size: 0.75em; color: #444; overflow-wrap: anywhere; }
.cell img { display: block; max-width: 128px; max-height: 128px; }
.bad { width: 128px; height: 96px; background: #fbeaea; color: #922; display: flex; align-items: center; justify-content: center; text-align: center; font-size: 0.85em; }
.pair { display: flex; gap: 6px; } .warning { background: #fff4d6; border-left: 4px solid #e0a000; padding: 0.4em 0.8em; }
"""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def e(value: Any) -> str:
    """``value`` as HTML text (``None`` as a dash)."""
    return html.escape("-" if value is None else str(value))


def number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    """An HTML table; cells are already-escaped HTML."""
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{e(h)}</th>" for h in header) if any(header) else ""  # no empty header row
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if n else f"<td>{c}</td>" for c, n in zip(row, numeric)) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def thumbnail(path: Path | str, size: int = 128) -> tuple[str | None, str]:
    """``(data URI, "")`` of a small JPEG of the image, or ``(None, reason)`` when it cannot be shown."""
    from tlkit.extract.decode import BadImage, open_rgb
    from tlkit.sources.image_files import is_regular_file

    if not is_regular_file(Path(path)):
        return None, "not a regular file" if Path(path).exists() else "file not found"
    try:
        small = open_rgb(path, min_size=size)
        small.thumbnail((size, size))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=80)
    except BadImage as exc:
        return None, str(exc)
    except (OSError, ValueError) as exc:
        return None, f"cannot read ({type(exc).__name__})"
    return data_uri(buffer.getvalue(), "image/jpeg"), ""


def thumb_cell(path: Path | str | None, caption: str, reason: str = "") -> str:
    """One thumbnail with its caption; a labelled placeholder (with the reason) where there is no picture."""
    uri, why = thumbnail(path) if path is not None and not reason else (None, reason or "no file to show")
    picture = f'<img alt="{e(caption)}" src="{uri}">' if uri else f'<div class="bad">{e(why)}</div>'
    return f'<div class="cell">{picture}{e(caption)}</div>'
