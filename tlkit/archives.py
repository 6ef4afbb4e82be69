"""Download a data archive and unpack it safely, so a recipe can fetch its own data.

The archive is verified (sha256, when the recipe gives one) and unpacked into a temporary folder
beside the target, which is renamed into place only when everything succeeded: a failed or
interrupted fetch leaves no partial data. Members that would land outside the target (``../``,
absolute paths, links) are refused.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from tlkit.errors import DataError
from tlkit.weights import download, sha256_file


def _check_member_name(name: str, archive: Path) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise DataError(f"archive {archive} was refused: member '{name}' would be written outside the target folder")


def _unpack_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(info.filename, archive)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:  # a symlink stored in a zip
                raise DataError(f"archive {archive} was refused: member '{info.filename}' is a symbolic link")
        zf.extractall(dest)


def _unpack_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            _check_member_name(member.name, archive)
            if member.issym() or member.islnk():
                raise DataError(f"archive {archive} was refused: member '{member.name}' is a link")
            if not (member.isfile() or member.isdir()):
                raise DataError(f"archive {archive} was refused: member '{member.name}' is not a file or folder")
        tf.extractall(dest, filter="data")


def unpack(archive: Path, root: Path) -> None:
    """Unpack ``archive`` so that its content becomes ``root`` (a single top folder is unwrapped)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.unpack-"))
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, staging)
        elif tarfile.is_tarfile(archive):
            _unpack_tar(archive, staging)
        else:
            raise DataError(f"{archive} is neither a zip nor a tar archive")
        entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        os.replace(source, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(url: str, root: Path, *, sha256: str | None = None) -> None:
    """Download ``url`` and unpack it into ``root``; raise :class:`DataError` saying what to do on failure."""
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f".{root.name}.download"
    try:
        try:
            download(url, archive)
        except OSError as exc:
            raise DataError(
                f"data folder {root} does not exist and {url} could not be fetched ({type(exc).__name__}): "
                f"download and unpack it so that {root} holds the class folders, or set dataset.root"
            ) from exc
        if sha256 and sha256_file(archive) != sha256.lower():
            raise DataError(f"download of {url} does not match dataset.sha256 {sha256[:12]}...; nothing was unpacked")
        unpack(archive, root)
    finally:
        archive.unlink(missing_ok=True)
