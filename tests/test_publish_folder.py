"""Publishing a folder by renaming it (:func:`tlkit.util.atomic.publish_folder`), the one way a run
directory, an unpacked data set and a converted model reach their final place."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tlkit.saved.run_directory import MARKER, RunDirectory
from tlkit.sources.archives import unpack
from tlkit.util.atomic import publish_folder


def folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_a_new_folder_is_one_rename(tmp_path: Path) -> None:
    staging = folder(tmp_path / ".staging", a="new")
    inode = staging.stat().st_ino
    assert publish_folder(staging, tmp_path / "final")
    assert (tmp_path / "final" / "a").read_text() == "new" and (tmp_path / "final").stat().st_ino == inode
    assert siblings(tmp_path) == ["final"]


def test_an_empty_claimed_folder_is_replaced(tmp_path: Path) -> None:
    os.mkdir(tmp_path / "final")
    assert publish_folder(folder(tmp_path / ".staging", a="new"), tmp_path / "final")
    assert (tmp_path / "final" / "a").read_text() == "new" and siblings(tmp_path) == ["final"]


def test_a_previous_folder_is_replaced_whole_and_nothing_is_left_aside(tmp_path: Path) -> None:
    folder(tmp_path / "final", a="old", b="old only")
    assert publish_folder(folder(tmp_path / ".staging", a="new"), tmp_path / "final")
    assert siblings(tmp_path / "final") == ["a"] and (tmp_path / "final" / "a").read_text() == "new"
    assert siblings(tmp_path) == ["final"]


def test_keep_existing_leaves_the_first_publisher_s_folder(tmp_path: Path) -> None:
    folder(tmp_path / "final", a="first")
    staging = folder(tmp_path / ".staging", a="second")
    assert not publish_folder(staging, tmp_path / "final", keep_existing=True)
    assert (tmp_path / "final" / "a").read_text() == "first" and (staging / "a").read_text() == "second"


def test_a_file_in_the_way_is_an_os_error_and_nothing_moves(tmp_path: Path) -> None:
    (tmp_path / "final").write_text("a file")
    staging = folder(tmp_path / ".staging", a="new")
    with pytest.raises(OSError):
        publish_folder(staging, tmp_path / "final")
    assert (tmp_path / "final").read_text() == "a file" and (staging / "a").is_file()


def test_a_failed_rename_puts_the_previous_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staging folder vanishes between the two renames (a cleaner ran): the previous folder is restored."""
    folder(tmp_path / "final", a="old")
    staging = folder(tmp_path / ".staging", a="new")
    real_replace = os.replace
    calls: list[str] = []

    def flaky(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(Path(src).name)
        if len(calls) == 3:  # publish onto the non-empty folder, move it aside, then this one
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        publish_folder(staging, tmp_path / "final")
    assert (tmp_path / "final" / "a").read_text() == "old" and (staging / "a").read_text() == "new"
    assert siblings(tmp_path) == [".staging", "final"]


def test_the_three_publishers_use_it(tmp_path: Path) -> None:
    """A run directory over a previous run, an archive over a folder another run unpacked, a converted model over a damaged one."""
    from tlkit.extract.runtimes.conversion import ModelStore, model_key

    out = tmp_path / "run"
    for text in ("first", "second"):
        run_dir = RunDirectory(out)
        run_dir.write_json("metrics.json", {"run": text})
        run_dir.commit({"complete": True})
    assert (out / "metrics.json").read_text().strip().endswith('"second"\n}') and (out / MARKER).is_file()
    assert siblings(tmp_path) == ["run"]

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/train/a.txt", "from the archive")
    folder(tmp_path / "data" / "train", **{"a.txt": "unpacked by another run"})
    unpack(archive, tmp_path / "data")
    assert (tmp_path / "data" / "train" / "a.txt").read_text() == "unpacked by another run"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data")]

    def builder(text: str) -> Callable[[Path], tuple[Path, dict[str, str]]]:
        def build(tmp: Path) -> tuple[Path, dict[str, str]]:
            (tmp / "model.bin").write_text(text)
            return tmp / "model.bin", {}

        return build

    store = ModelStore(tmp_path / "cache")
    identity = {"backbone": "tiny"}
    key = model_key(identity)  # an entry is valid only under the key of the identity it records
    for text in ("damaged", "rebuilt"):
        store.save(key, builder(text), {"identity": identity})
    stored = store.load(key, identity)
    assert stored is not None and stored.main is not None and stored.main.read_text() == "rebuilt"
    assert siblings(store.base) == [store.folder(key).name]
