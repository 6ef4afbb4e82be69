"""Finding image files in folders: one walker, shared by the data set loaders and ``tlkit predict``.

A file is an image by its extension (torchvision's list, as its ``ImageFolder``: ``.gif`` is not one,
which keeps the ants/bees placeholder ``imageNotFound.gif`` out as in the reference). Hidden entries,
other extensions, links that lead nowhere and anything that is not a regular file (a FIFO would block
the reader forever, a socket or device cannot be decoded) are left out and returned as such, so the
caller can say what it skipped. Links are followed once: a folder reached twice (a symlink loop, or
the same folder linked from two places) is walked only the first time, so no image appears twice.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# torchvision's IMG_EXTENSIONS (torchvision.datasets.folder), written out: importing torchvision costs
# about 2.5 s (it pulls in torch._dynamo), which listing a folder must not pay; tests check they agree.
EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # public as tlkit.IMAGE_EXTENSIONS


@dataclass
class FoundFiles:
    """Image files in walk order (sorted per folder), and the other entries that were left out."""

    images: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(EXTENSIONS)


def is_regular_file(path: Path) -> bool:
    """True for a regular file (through links); False for FIFOs, sockets, devices, folders, dangling links."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def walk_images(folder: Path) -> FoundFiles:
    """Image files under ``folder``, recursively, sorted, each real folder visited once.

    Public as ``tlkit.walk_images``: a change to its signature is a plugin API change (``docs/plugin-api.md``).
    """
    found = FoundFiles()
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            (found.images if is_image_name(name) and is_regular_file(path) else found.skipped).append(path)
    return found


def image_files(inputs: Iterable[Path | str]) -> FoundFiles:
    """Files as given (kept even with an unusual extension: the user named them), folders walked."""
    found = FoundFiles()
    for item in map(Path, inputs):
        if item.is_dir():
            walked = walk_images(item)
            found.images.extend(walked.images)
            found.skipped.extend(walked.skipped)
        elif is_regular_file(item):
            found.images.append(item)
        else:
            found.skipped.append(item)
    return found
