"""Reading a file that someone else may have put in place: only a regular file, only up to a size.

A run directory, a fine-tuning checkpoint or a store entry is a folder anyone can edit. A name there
may be a link to ``/dev/zero`` (reading never ends), a FIFO (opening never returns) or a file of
hundreds of GB; hashing or parsing it as if it were the small file tlkit wrote would hang or exhaust
memory. :func:`open_regular` checks the target before opening it (``stat``: no device is opened),
opens it without blocking (a FIFO swapped in meanwhile cannot hold the open), and checks the opened
descriptor again. The error is :class:`UnsafeFile`, a ``ValueError`` whose text completes the
sentence "``<path>`` ...", for the caller to turn into its own one-line error.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_BLOCK = 1 << 20
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class UnsafeFile(ValueError):
    """Not a regular file, or larger than the bound; ``str()`` reads "is a FIFO, not a regular file"."""


def _check(info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a plain file")
        raise UnsafeFile(f"is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise UnsafeFile(f"is {info.st_size / 2**20:.1f} MiB, over the {max_bytes / 2**20:g} MiB bound for such a file")


@contextmanager
def open_regular(path: Path | str, max_bytes: int) -> Iterator[BinaryIO]:
    """``path`` opened for reading when it is (or links to) a regular file of at most ``max_bytes``.

    ``FileNotFoundError`` and other ``OSError`` pass through; anything else is :class:`UnsafeFile`.
    """
    _check(os.stat(path), max_bytes)  # follows a link, opens nothing
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        _check(os.fstat(fd), max_bytes)  # what was opened, should the name have changed since the stat
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_regular(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of ``path`` (see :func:`open_regular`); a file that grew past ``max_bytes`` while read is refused too."""
    with open_regular(path, max_bytes) as fh:
        data = fh.read(os.fstat(fh.fileno()).st_size)  # the size checked above, read in one allocation
        if fh.read(1):
            raise UnsafeFile("changed while it was read (it grew); try again when nothing writes it")
    return data


def sha256_regular(path: Path | str, max_bytes: int) -> str:
    """The hex sha256 of ``path``'s bytes (see :func:`open_regular`), reading at most ``max_bytes``."""
    digest = hashlib.sha256()
    done = 0
    with open_regular(path, max_bytes) as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            done += len(block)
            if done > max_bytes:
                raise UnsafeFile(f"grew past the {max_bytes / 2**20:g} MiB bound for such a file while it was read")
            digest.update(block)
    return digest.hexdigest()
