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
import zlib
from pathlib import Path, PurePosixPath

from tlkit.errors import DataError
from tlkit.weights import download, sha256_file


def _check_member_name(name: str, archive: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise DataError(f"archive {archive} was refused: member '{name}' would be written outside the target folder")


def _unpack_zip(archive: Path, dest: Path, label: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(info.filename, label)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:  # a symlink stored in a zip
                raise DataError(f"archive {label} was refused: member '{info.filename}' is a symbolic link")
        zf.extractall(dest)


def _unpack_tar(archive: Path, dest: Path, label: str) -> None:
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            _check_member_name(member.name, label)
            if member.issym() or member.islnk():
                raise DataError(f"archive {label} was refused: member '{member.name}' is a link")
            if not (member.isfile() or member.isdir()):
                raise DataError(f"archive {label} was refused: member '{member.name}' is not a file or folder")
        tf.extractall(dest, filter="data")


def unpack(archive: Path, root: Path, *, label: str | None = None) -> None:
    """Unpack ``archive`` so that its content becomes ``root`` (a single top folder is unwrapped).

    ``label`` names the archive in errors (the URL it came from); nothing reaches ``root`` unless
    every member was checked and written.
    """
    label = label or str(archive)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.unpack-"))
    try:
        try:
            if zipfile.is_zipfile(archive):
                _unpack_zip(archive, staging, label)
            elif tarfile.is_tarfile(archive):
                _unpack_tar(archive, staging, label)
            else:
                raise DataError(f"{label} is neither a zip nor a tar archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise DataError(f"archive {label} is damaged ({type(exc).__name__}: {str(exc)[:80]}); nothing was unpacked") from exc
        except OSError as exc:
            raise DataError(f"cannot unpack {label} into {root.parent} ({exc.strerror or exc}); nothing was unpacked") from exc
        entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        try:
            os.replace(source, root)
        except OSError:
            if not root.is_dir():  # another run fetching the same data set got there first: use theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(url: str, root: Path, *, sha256: str | None = None) -> None:
    """Download ``url`` and unpack it into ``root``; raise :class:`DataError` saying what to do on failure.

    Folders made on the way to ``root`` (``data/`` of the quick start) are removed again when the
    fetch fails, so a failed download leaves nothing behind.
    """
    made = _missing_parents(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=root.parent, prefix=f".{root.name}.", suffix=".download")  # one per run: runs may fetch at once
    os.close(fd)
    archive = Path(name)
    done = False
    try:
        try:
            download(url, archive)
        except (OSError, ValueError) as exc:  # ValueError: not a URL urllib can open
            raise DataError(
                f"data folder {root} does not exist and {url} could not be fetched ({type(exc).__name__}): "
                f"download and unpack it so that {root} holds the class folders, or set dataset.root"
            ) from exc
        if sha256 and sha256_file(archive) != sha256.strip().lower():
            raise DataError(f"download of {url} does not match dataset.sha256 {sha256[:12]}...; nothing was unpacked")
        unpack(archive, root, label=url)
        done = True
    finally:
        archive.unlink(missing_ok=True)
        if not done:
            for folder in made:  # deepest first; one another run is using is not empty and stays
                try:
                    folder.rmdir()
                except OSError:
                    break


def _missing_parents(root: Path) -> list[Path]:
    """The folders above ``root`` that do not exist yet, deepest first."""
    missing = []
    for parent in root.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing
