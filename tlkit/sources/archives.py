"""Download a data archive and unpack it safely, so a recipe can fetch its own data.

The archive is verified (sha256, when the recipe gives one) and unpacked into a temporary folder
beside the target, which is renamed into place only when everything succeeded: a failed or
interrupted fetch leaves no partial data. Members that would land outside the target (``../``,
absolute paths, links) are refused.

Every wait and every resource is bounded. A download shows progress (through :func:`reporting`,
which the engine connects to its observer), gives up when the server does not answer within
:data:`FIRST_BYTE_S` (15 s: connecting and the reply's headers), when it stalls (less than
:data:`MIN_PROGRESS_BYTES` in ``TLKIT_DOWNLOAD_STALL_S`` seconds, default 60: a server sending a
byte every few seconds never trips a per-read timeout) and at an overall deadline
(``TLKIT_DOWNLOAD_DEADLINE_S``, default 3600; ``inf`` sets any of these bounds to no limit). Unpacking refuses, before writing anything, an
archive whose members add up to more than ``TLKIT_MAX_UNPACKED_BYTES`` (default 64 GiB) or more than
the free disk space, or that expands more than ``TLKIT_MAX_COMPRESSION_RATIO`` times (default 100;
photos barely compress, zip bombs expand a thousandfold).
"""

from __future__ import annotations

import contextvars
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tlkit.errors import DataError
from tlkit.sources.weights import offline, sha256_file
from tlkit.util.atomic import current_umask, publish_folder
from tlkit.util.units import finite_or_none, human_bytes, positive_number

MIN_PROGRESS_BYTES = 64 * 1024
FIRST_BYTE_S = 15.0  # a server that accepts and never answers is given up this soon (or at the stall bound, if shorter)
RATIO_FLOOR_BYTES = 64 * 2**20  # below this much unpacked data the ratio is not checked (tiny archives compress oddly)
_BLOCK = 1 << 16

#: ``task(description, total, unit)`` -> context yielding ``advance(n)``: the engine's ``Observer.task``.
Task = Callable[[str, "int | None", str], AbstractContextManager[Callable[[int], None]]]
_progress: contextvars.ContextVar[Task | None] = contextvars.ContextVar("tlkit_download_progress", default=None)


def _env_number(name: str, default: float) -> float:
    try:
        return positive_number(name, default)
    except ValueError as exc:
        raise DataError(str(exc)) from None


@dataclass(frozen=True)
class Limits:
    """Bounds on fetching and unpacking one archive (defaults from the environment, see the module doc)."""

    stall_s: float = 60.0
    deadline_s: float = 3600.0
    first_byte_s: float = FIRST_BYTE_S  # connecting and the server's answer (its headers), before any data
    max_unpacked_bytes: float = 64 * 2**30  # inf: no limit
    max_ratio: float = 100.0
    ratio_floor_bytes: int = RATIO_FLOOR_BYTES

    def answer_timeout(self) -> float:
        """Seconds to wait for the connection and the server's first byte: the shorter of ``first_byte_s`` and the stall bound."""
        return min(self.first_byte_s, self.stall_s)

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            stall_s=_env_number("TLKIT_DOWNLOAD_STALL_S", cls.stall_s),
            deadline_s=_env_number("TLKIT_DOWNLOAD_DEADLINE_S", cls.deadline_s),
            max_unpacked_bytes=_env_number("TLKIT_MAX_UNPACKED_BYTES", cls.max_unpacked_bytes),
            max_ratio=_env_number("TLKIT_MAX_COMPRESSION_RATIO", cls.max_ratio),
        )


@contextmanager
def reporting(task: Task | None) -> Iterator[None]:
    """Show the progress of downloads started inside this block through ``task`` (an ``Observer.task``)."""
    token = _progress.set(task)
    try:
        yield
    finally:
        _progress.reset(token)


@contextmanager
def _silent(description: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def download(url: str, dest: Path, limits: Limits) -> None:
    """Copy ``url`` into ``dest``, showing progress; a stalled or overlong transfer is a :class:`DataError`.

    ``OSError``/``ValueError`` mean the URL could not be reached or opened at all.
    """
    if offline():
        raise OSError("offline (TLKIT_OFFLINE is set)")
    started = time.monotonic()
    task = _progress.get() or _silent
    # The socket timeout bounds a server that sends nothing: first its answer (15 s), then each read of
    # the data (the stall bound); the checks below bound one that dribbles.
    try:
        response = urllib.request.urlopen(url, timeout=finite_or_none(limits.answer_timeout()))  # noqa: S310 - URLs come from recipes
    except (TimeoutError, urllib.error.URLError) as exc:
        if not isinstance(exc, TimeoutError) and not isinstance(getattr(exc, "reason", None), TimeoutError):
            raise
        raise DataError(
            f"{url} did not answer within {limits.answer_timeout():g} s (connected, or tried to, and no reply came); "
            "try again later, or download it yourself"
        ) from None
    _set_read_timeout(response, finite_or_none(limits.stall_s))
    with response, dest.open("wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        read = getattr(response, "read1", response.read)  # read1: whatever has arrived, never waits for a full block
        with task(f"downloading {url}", total, "B") as advance:
            done = mark_bytes = 0
            mark_time = started
            while block := read(_BLOCK):
                out.write(block)
                done += len(block)
                advance(len(block))
                now = time.monotonic()
                if done - mark_bytes >= MIN_PROGRESS_BYTES:
                    mark_bytes, mark_time = done, now
                elif now - mark_time > limits.stall_s:
                    raise DataError(
                        f"download of {url} stalled: less than {MIN_PROGRESS_BYTES // 1024} KiB in {limits.stall_s:g} s "
                        f"({done} bytes so far); try again later or raise TLKIT_DOWNLOAD_STALL_S"
                    )
                if now - started > limits.deadline_s:
                    raise DataError(
                        f"download of {url} took longer than {limits.deadline_s:g} s ({done} bytes so far); "
                        "raise TLKIT_DOWNLOAD_DEADLINE_S or download it yourself"
                    )


def _set_read_timeout(response: object, seconds: float | None) -> None:
    """Once the server has answered, a read may wait up to the stall bound (``http.client`` keeps its socket in ``fp.raw``)."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(seconds)


def _check_member_name(name: str, archive: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise DataError(f"archive {archive} was refused: member '{name}' would be written outside the target folder")


class _Budget:
    """Adds up the members' sizes as they are listed and refuses the archive as soon as a bound is passed."""

    def __init__(self, archive: Path, dest: Path, label: str, limits: Limits) -> None:
        self.label = label
        self.limits = limits
        self.packed = max(1, archive.stat().st_size)
        self.free = shutil.disk_usage(dest).free
        self.total = 0

    def add(self, name: str, size: int) -> None:
        self.total += max(0, size)
        refuse = f"archive {self.label} was refused before unpacking"
        if self.total > self.limits.max_unpacked_bytes:
            raise DataError(
                f"{refuse}: it unpacks to more than {_human(self.limits.max_unpacked_bytes)} (at member '{name}'); "
                "raise TLKIT_MAX_UNPACKED_BYTES if that is expected"
            )
        if self.total > self.limits.ratio_floor_bytes and self.total > self.limits.max_ratio * self.packed:
            raise DataError(
                f"{refuse}: {_human(self.packed)} expand to more than {_human(self.total)} (over {self.limits.max_ratio:g}x, "
                f"at member '{name}'; a zip bomb?); raise TLKIT_MAX_COMPRESSION_RATIO if that is expected"
            )
        if self.total > self.free:
            raise DataError(f"{refuse}: it needs more than {_human(self.total)} but only {_human(self.free)} are free in {self.label}'s target folder")


def _human(size: float) -> str:
    return human_bytes(size, ("B", "KiB", "MiB", "GiB"))


def _unpack_zip(archive: Path, dest: Path, label: str, limits: Limits) -> None:
    budget = _Budget(archive, dest, label, limits)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(info.filename, label)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:  # a symlink stored in a zip
                raise DataError(f"archive {label} was refused: member '{info.filename}' is a symbolic link")
            budget.add(info.filename, info.file_size)  # zipfile never writes more than a member's declared size
        zf.extractall(dest)


def _unpack_tar(archive: Path, dest: Path, label: str, limits: Limits) -> None:
    budget = _Budget(archive, dest, label, limits)
    with tarfile.open(archive) as tf:
        for member in tf:  # streamed: a bomb is refused at the member that passes a bound, not after decompressing it all
            _check_member_name(member.name, label)
            if member.issym() or member.islnk():
                raise DataError(f"archive {label} was refused: member '{member.name}' is a link")
            if not (member.isfile() or member.isdir()) or member.issparse():
                raise DataError(f"archive {label} was refused: member '{member.name}' is not a file or folder")
            budget.add(member.name, member.size)
        tf.extractall(dest, filter="data")


def unpack(archive: Path, root: Path, *, label: str | None = None, limits: Limits | None = None) -> None:
    """Unpack ``archive`` so that its content becomes ``root`` (a single top folder is unwrapped).

    ``label`` names the archive in errors (the URL it came from); nothing reaches ``root`` unless
    every member was checked and written.
    """
    label = label or str(archive)
    limits = limits or Limits.from_env()
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.unpack-"))
    try:
        try:
            if zipfile.is_zipfile(archive):
                _unpack_zip(archive, staging, label, limits)
            elif tarfile.is_tarfile(archive):
                _unpack_tar(archive, staging, label, limits)
            else:
                raise DataError(f"{label} is neither a zip nor a tar archive")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise DataError(f"archive {label} is damaged ({type(exc).__name__}: {str(exc)[:80]}); nothing was unpacked") from exc
        except OSError as exc:
            raise DataError(f"cannot unpack {label} into {root.parent} ({exc.strerror or exc}); nothing was unpacked") from exc
        entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        _honour_umask(source)
        publish_folder(source, root, keep_existing=True)  # another run fetching the same data set got there first: use theirs
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _honour_umask(folder: Path) -> None:
    """``mkdtemp`` makes folders 0700; the unpacked data set gets the mode any folder gets here (umask)."""
    folder.chmod(0o777 & ~current_umask())


def fetch(url: str, root: Path, *, sha256: str | None = None, limits: Limits | None = None) -> None:
    """Download ``url`` and unpack it into ``root``; raise :class:`DataError` saying what to do on failure.

    Folders made on the way to ``root`` (``data/`` of the quick start) are removed again when the
    fetch fails, so a failed download leaves nothing behind. Public as ``tlkit.fetch_archive``: a change to its signature is a plugin API change (``docs/plugin-api.md``).
    """
    limits = limits or Limits.from_env()
    made = _missing_parents(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=root.parent, prefix=f".{root.name}.", suffix=".download")  # one per run: runs may fetch at once
    os.close(fd)
    archive = Path(name)
    done = False
    try:
        try:
            download(url, archive, limits)
        except (OSError, ValueError) as exc:  # ValueError: not a URL urllib can open
            raise DataError(
                f"data folder {root} does not exist and {url} could not be fetched ({type(exc).__name__}): "
                f"download and unpack it so that {root} holds the class folders, or set dataset.root"
            ) from exc
        if sha256 and sha256_file(archive) != sha256.strip().lower():
            raise DataError(f"download of {url} does not match dataset.sha256 {sha256[:12]}...; nothing was unpacked")
        unpack(archive, root, label=url, limits=limits)
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
