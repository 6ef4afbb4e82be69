"""Contact sheets: a few images of every class, per split, so a person looks at the data before training.

fastai's ``show_batch`` shows one random batch; a contact sheet shows every class side by side with
its counts per split, which is where wrong folders, empty classes and copies between splits show.
The sample is deterministic for a seed (each class and split seeded by name, so adding a class does
not reshuffle the others). Images decode through the run's own decoder and its limits
(:func:`tlkit.extract.decode.open_rgb`); one that cannot be shown is a labelled placeholder with the
reason, never a crash. Output: one PNG per class (``NN-<class>.png``) and a self-contained HTML page;
the same section goes into ``report.html``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tlkit.outputs.html_parts import THUMB_STYLE, e, thumb_cell

TILE = 112
MAX_PER_CLASS = 64
MAX_CLASSES = 200


@dataclass(frozen=True)
class SheetImage:
    """One image to show: its file (``None`` when it has none, e.g. a member of a tar shard) and its name."""

    path: Path | None
    name: str


@dataclass(frozen=True)
class ClassSheet:
    """One class: its images per split (the sample) and its full count per split."""

    name: str
    picked: Mapping[str, tuple[SheetImage, ...]]
    counts: Mapping[str, int]


def pick(classes: Sequence[str], splits: Mapping[str, Sequence[tuple[SheetImage, int]]], per_class: int, seed: int) -> list[ClassSheet]:
    """``per_class`` images of each class in each split, the same for the same seed whatever order they were listed in."""
    per_class = max(1, min(per_class, MAX_PER_CLASS))
    sheets = []
    for index, name in enumerate(classes[:MAX_CLASSES]):
        picked, counts = {}, {}
        for split, items in splits.items():
            members = sorted((image for image, label in items if label == index), key=lambda image: image.name)
            counts[split] = len(members)
            chosen = random.Random(f"{seed}:{split}:{name}").sample(members, min(per_class, len(members)))
            picked[split] = tuple(sorted(chosen, key=lambda image: image.name))
        sheets.append(ClassSheet(name=name, picked=picked, counts=counts))
    return sheets


def counts_line(sheet: ClassSheet) -> str:
    return ", ".join(f"{split} {count}" for split, count in sheet.counts.items())


def _tile(image: SheetImage) -> tuple[object, str]:
    """The thumbnail (PIL image) or ``(None, reason)``."""
    from tlkit.extract.decode import BadImage, open_rgb
    from tlkit.sources.image_files import is_regular_file

    if image.path is None:
        return None, "inside a shard: not shown"
    if not is_regular_file(image.path):
        return None, "not a regular file"
    try:
        img = open_rgb(image.path, min_size=TILE)
        img.thumbnail((TILE, TILE))
        return img, ""
    except BadImage as exc:
        return None, str(exc)


def sheet_png(sheet: ClassSheet, path: Path) -> Path:
    """One PNG: the class name and counts, then a row of thumbnails per split (placeholders with reasons for bad files)."""
    from PIL import Image, ImageDraw

    columns = max([len(images) for images in sheet.picked.values()] + [1])
    label_w, line = 70, 16
    canvas = Image.new("RGB", (label_w + columns * (TILE + 4) + 4, 28 + len(sheet.picked) * (TILE + line + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 6), f"{sheet.name}  ({counts_line(sheet)})", fill="black")
    for row, (split, images) in enumerate(sheet.picked.items()):
        top = 28 + row * (TILE + line + 6)
        draw.text((4, top + TILE // 2), f"{split}", fill="black")
        for column, image in enumerate(images):
            left = label_w + column * (TILE + 4)
            picture, reason = _tile(image)
            if picture is None:
                draw.rectangle((left, top, left + TILE - 1, top + TILE - 1), fill=(251, 234, 234), outline=(200, 120, 120))
                draw.multiline_text((left + 4, top + 4), _wrap(reason, 16), fill=(140, 20, 20))
            else:
                canvas.paste(picture, (left, top))  # type: ignore[arg-type]
            draw.text((left, top + TILE + 2), _wrap(image.name, 18).splitlines()[0], fill=(60, 60, 60))
    canvas.save(path, format="PNG")
    return path


def _wrap(text: str, width: int) -> str:
    return "\n".join(text[i : i + width] for i in range(0, min(len(text), width * 6), width)) or "-"


def file_name(index: int, name: str) -> str:
    """``03-tabby_cat.png``: numbered (two classes may differ only in characters a file name cannot hold)."""
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:60]}.png"


def sheets_html(sheets: Sequence[ClassSheet], heading: str = "the data, a sample per class", left_out: int = 0) -> str:
    """A ``<section id="data">``: per class its counts and thumbnails per split, embedded."""
    parts = [f'<section id="data"><h2>{e(heading)}</h2>']
    for sheet in sheets:
        parts.append(f"<h3>{e(sheet.name)} <small>({e(counts_line(sheet))})</small></h3>")
        for split, images in sheet.picked.items():
            cells = "".join(thumb_cell(image.path, image.name, "" if image.path is not None else "inside a shard: not shown") for image in images)
            parts.append(f'<div><b>{e(split)}</b></div><div class="sheet">{cells or "<i>no images</i>"}</div>')
    if left_out:
        parts.append(f'<p class="note">{left_out} more classes not shown (at most {MAX_CLASSES})</p>')
    return "".join(parts) + "</section>"


def page_html(title: str, body: str) -> str:
    """A whole self-contained page around ``body`` (inline style, no external resource)."""
    style = "body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }" + THUMB_STYLE
    return f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title><style>{style}</style></head><body><h1>{e(title)}</h1>{body}</body></html>\n'
