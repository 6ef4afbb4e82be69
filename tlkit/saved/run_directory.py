"""The run directory: written in a staging folder beside it and renamed into place when complete.

A run that fails or is interrupted never leaves a directory that looks finished. Until the final
rename everything lives in ``<out>.partial-*``, which holds an ``INCOMPLETE`` file from the moment
it is created. On an error or Ctrl-C the staging folder is deleted: the run's files are all written
in the last few milliseconds, so an unfinished one holds nothing worth keeping (extracted features
live in the feature cache, not here). Only a hard kill (SIGKILL, power loss) can leave a
``.partial-*`` folder behind, and its ``INCOMPLETE`` file says so; a complete run has ``run.json``.

An existing ``--out`` that holds a previous tlkit run is replaced only once the new one is complete;
any other non-empty folder is refused before work starts, as are an unwritable parent folder and a
nearly full disk. A previous run that holds files tlkit did not write there (notes, a user's own
plots) is refused too, naming them: replacing the run would delete them. A write that fails later
(disk full) is an :class:`OutputError` naming the file.

``run.json`` records the sha256 of every file the run wrote; :func:`verify_files` checks the ones
tlkit reads back before a run is loaded, so a damaged head or ``classes.json`` is refused in one
line instead of predicting something else. Every file read back is opened by
:func:`tlkit.util.regular_files.open_regular` under :func:`max_bytes`: a name turned into a link
to ``/dev/zero``, a FIFO or a giant file is refused in one line, never hashed or read without end.
Folders and files honour the umask (``mkdtemp`` alone
would make the run folder 0700, unusable by a team).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save

from tlkit.errors import OutputError, RunError
from tlkit.util.atomic import current_umask, publish_folder, write_atomic
from tlkit.util.hashing import file_sha256
from tlkit.util.regular_files import UnsafeFile, open_regular, read_regular, sha256_regular

MARKER = "run.json"
INCOMPLETE = "INCOMPLETE"
MIN_FREE_BYTES = 16 * 2**20  # a run directory is small (a head, some JSON); less than this is a disk about to fill
# What tlkit reads back from a run (loading it; `tlkit features` reads the seed in recipe.yaml, tlkit.load split.csv).
READ_BACK = ("model.json", "classes.json", "head.safetensors", "backbone.safetensors", "recipe.yaml", "split.csv")
# The most a file of a run may hold, by suffix: far above what tlkit writes (a kNN head keeps its training
# features; a random backbone travels whole), far below what hashing or parsing could not finish.
_MAX_BYTES = {".safetensors": 16 * 2**30, ".csv": 2 * 2**30, ".json": 64 * 2**20, ".yaml": 16 * 2**20}
# `tlkit export` and `tlkit audit RUN` write these into a run by default: replaced with it
TLKIT_EXTRAS = ("model.onnx", "model.pt", "model.pt2", "audit.json", "audit.csv")


def read_marker(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a finished run; a damaged one is a :class:`RunError`."""
    path = run_dir / MARKER
    try:
        data = json.loads(read_regular(path, max_bytes(path)).decode("utf-8"))
    except UnsafeFile as exc:
        raise RunError(f"{path} {exc}; the run directory is damaged, run the recipe again") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise RunError(f"{path} cannot be read ({type(exc).__name__}); the run directory is damaged, run the recipe again") from None
    if not isinstance(data, dict) or not isinstance(data.get("files", {}), dict):
        raise RunError(f"{path} is damaged (not the record of a run); run the recipe again")
    return data


def max_bytes(path: Path | str) -> int:
    """The most a run's file of this name may hold (by suffix; 64 MiB for any other)."""
    return _MAX_BYTES.get(Path(path).suffix, 64 * 2**20)


@contextmanager
def _run_file_errors(path: Path) -> Iterator[None]:
    """What can go wrong opening a run's file, as the one :class:`RunError` line each case gets."""
    try:
        yield
    except FileNotFoundError:
        raise RunError(f"{path} is missing; the run directory is incomplete, run the recipe again") from None
    except UnsafeFile as exc:
        raise RunError(f"{path} {exc}; it is not the file the run wrote, run the recipe again") from None
    except OSError as exc:
        raise RunError(f"{path} cannot be read ({exc.strerror or exc})") from None


def read_run_file(path: Path) -> bytes:
    """The bytes of a run's file, if it is a regular file within :func:`max_bytes`; :class:`RunError` otherwise."""
    with _run_file_errors(path):
        return read_regular(path, max_bytes(path))


def check_run_file(path: Path) -> None:
    """Refuse (:class:`RunError`) a run file that is not a regular file within :func:`max_bytes` (before a library opens it)."""
    with _run_file_errors(path), open_regular(path, max_bytes(path)):
        pass


def verify_files(run_dir: Path, names: tuple[str, ...] = READ_BACK) -> None:
    """Check the files tlkit reads back against the sha256 ``run.json`` recorded; refuse a damaged run.

    Runs written before the record existed have no ``files`` and are not checked.
    """
    recorded = read_marker(run_dir).get("files", {})
    for name in names:
        if name not in recorded:
            continue
        path = run_dir / name
        try:
            actual = sha256_regular(path, max_bytes(path))
        except FileNotFoundError:
            raise RunError(f"{path} is missing; the run directory is incomplete, run the recipe again") from None
        except UnsafeFile as exc:
            raise RunError(f"{path} {exc}; it is not the file the run wrote, run the recipe again") from None
        except OSError as exc:
            raise RunError(f"{path} cannot be read ({exc.strerror or exc})") from None
        if actual != recorded[name]:
            raise RunError(
                f"{path} is damaged: its sha256 {actual[:16]}... is not the {str(recorded[name])[:16]}... recorded in {MARKER} "
                "when the run was written; run the recipe again (or restore the file)"
            )


def _foreign_files(final: Path) -> list[str]:
    """Files in a previous run that tlkit did not write (they would be deleted by replacing it)."""
    try:
        recorded = set(read_marker(final).get("files", {}))
    except RunError:
        recorded = set()
    known = recorded | {MARKER, *TLKIT_EXTRAS} | (set() if recorded else set(READ_BACK) | _LEGACY_FILES)
    return sorted(str(p.relative_to(final)) for p in final.rglob("*") if not p.is_dir() and str(p.relative_to(final)) not in known)


_LEGACY_FILES = {"metrics.json", "predictions.csv", "errors.csv", "bad_images.csv", "confusion_matrix.png", "training_curve.png"}


def default_out_dir(recipe_name: str, base: Path = Path("runs")) -> Path:
    return base / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def os_error(what: str, exc: OSError) -> OutputError:
    """The one line for a file of a run that could not be written: a full disk says to free space, else to check permissions."""
    reason = exc.strerror or str(exc)
    hint = "free some disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "check the folder's permissions"
    return OutputError(f"cannot write {what} ({reason}); {hint} or choose another --out")


class RunDirectory:
    """Collects a run's files in a staging folder; :meth:`commit` moves them to ``final``.

    With ``unique`` (a default, timestamped ``--out``), a run that finds ``final`` taken by another
    run finishing at the same second commits to ``final-2``, ``final-3``, ... instead of replacing it.
    """

    def __init__(self, final: Path, *, unique: bool = False, min_free: int = MIN_FREE_BYTES) -> None:
        self.final = final
        self.unique = unique
        if final.exists():
            if not final.is_dir():
                raise OutputError(f"--out {final} is a file; choose a folder")
            if any(final.iterdir()) and not (final / MARKER).is_file():
                raise OutputError(f"--out {final} is a non-empty folder that is not a tlkit run; choose another --out")
            foreign = _foreign_files(final) if (final / MARKER).is_file() else []
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise OutputError(
                    f"--out {final} is an earlier run that also holds files tlkit did not write ({shown}); "
                    "replacing the run would delete them: move them elsewhere or choose another --out"
                )
        try:
            self._made_parent = not final.parent.exists()  # e.g. runs/ on a first run: removed again if it fails
            final.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(final.parent).free
        except OSError as exc:
            raise OutputError(f"cannot create the run directory's folder {final.parent} ({exc.strerror or exc}); choose another --out") from None
        if free < min_free:
            raise OutputError(f"only {free / 2**20:.1f} MiB free in {final.parent}; free some space or choose another --out")
        try:
            self.path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{final.name}.partial-"))
            self.path.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide the run from the team
            (self.path / INCOMPLETE).write_text(
                f"tlkit run in progress (pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}); "
                "if no tlkit is running, this folder is the remains of a killed run and can be deleted\n",
                encoding="utf-8",
            )
        except OSError as exc:
            raise OutputError(f"cannot write the run directory in {final.parent} ({exc.strerror or exc}); choose another --out") from None

    @classmethod
    def adopt(cls, staging: Path, final: Path) -> RunDirectory:
        """Continue in an existing staging folder (an interrupted fine-tuning run being resumed)."""
        if final.is_dir() and any(final.iterdir()) and not (final / MARKER).is_file():
            raise OutputError(f"{final} is a non-empty folder that is not a tlkit run; move it away to resume into it")
        run_dir = cls.__new__(cls)
        run_dir.final, run_dir.unique, run_dir._made_parent, run_dir.path = final, False, False, staging
        return run_dir

    def write_json(self, name: str, data: Any) -> Path:
        return self._write_text(name, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")

    def write_yaml(self, name: str, data: Any) -> Path:
        return self._write_text(name, yaml.safe_dump(data, sort_keys=False))

    def write_tensors(self, name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
        # Serialise in memory and write with Python, so a full disk is an OSError like every other write.
        data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
        return self._write_bytes(name, data)

    def file(self, name: str) -> Path:
        """A path inside the staging folder for writers that need one (plots, CSV)."""
        return self.path / name

    def _write_text(self, name: str, text: str) -> Path:
        return self._write_bytes(name, text.encode("utf-8"))

    def _write_bytes(self, name: str, data: bytes) -> Path:
        target = self.path / name
        try:
            write_atomic(target, data)  # flushed: a full disk may only say so then
        except OSError as exc:
            raise os_error(str(target), exc) from None
        return target

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A path for a writer of its own (a plot); an ``OSError`` there (disk full) becomes an :class:`OutputError`."""
        target = self.path / name
        try:
            yield target
        except OSError as exc:  # the file that failed, when the writer says (several plots), else ``name``
            raise os_error(str(exc.filename or target), exc) from None

    def recorded_files(self) -> dict[str, str]:
        """sha256 of every file written so far (what ``run.json`` records)."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name not in (INCOMPLETE, MARKER))
        return {str(p.relative_to(self.path)): file_sha256(p) for p in files}

    def commit(self, marker: Mapping[str, Any]) -> Path:
        """Write the completion marker (with every file's sha256) and move the run into place (replacing a previous run there)."""
        self.write_json(MARKER, {**dict(marker), "files": self.recorded_files()})
        try:
            (self.path / INCOMPLETE).unlink()
            if self.unique:
                self.final = self._rename_unique()
                return self.final
            publish_folder(self.path, self.final)  # a previous run there is replaced in one rename
        except OSError as exc:
            raise os_error(f"the run directory {self.final}", exc) from None
        return self.final

    def _rename_unique(self) -> Path:
        for n in range(1, 1000):
            target = self.final if n == 1 else self.final.with_name(f"{self.final.name}-{n}")
            try:
                os.mkdir(target)  # claims the name atomically; publishing onto the empty folder then replaces it
            except FileExistsError:
                continue
            publish_folder(self.path, target)
            return target
        raise OutputError(f"too many runs named {self.final}-*; choose --out")

    def discard(self) -> None:
        """Remove the staging folder (and the parent folder this run created, if it is left empty)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._made_parent:
            try:
                self.final.parent.rmdir()
            except OSError:
                pass  # not empty (another run's files) or already gone
