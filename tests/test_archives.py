"""Downloaded data archives: members that would escape the target are refused, a wrong sha256 is an
error, and neither leaves anything behind. Archives are built by the test and served over a local
HTTP server (127.0.0.1) or a file:// URL, the real download path."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from conftest import make_image

from tlkit.errors import DataError
from tlkit.sources.archives import fetch, unpack


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _image_bytes(tmp_path: Path) -> bytes:
    return make_image(tmp_path / "src.jpg", (200, 40, 40)).read_bytes()


def good_zip(path: Path, image: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "val"):
            for cls in ("ants", "bees"):
                zf.writestr(f"data/{split}/{cls}/{cls}_0.jpg", image)
    return path


def zip_with(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data/train/ants/a.jpg", b"fine")
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, data)
    return path


def tar_with(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("data/train/ants/a.jpg")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        member = tarfile.TarInfo({"dotdot": "data/../../escaped.txt", "absolute": "/tmp/escaped.txt"}.get(kind, "data/link"))
        if kind == "symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            member.type, member.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            member.type = tarfile.CHRTYPE
        else:
            member.size = 6
        tf.addfile(member, io.BytesIO(b"escape") if member.isfile() else None)
    return path


def _leftovers(parent: Path, root: Path) -> list[Path]:
    """What a fetch left beside ``root``; a parent folder the fetch made is removed on failure, leaving nothing."""
    if not parent.exists():
        return []
    return [p for p in parent.iterdir() if p.name.startswith(f".{root.name}") or p == root]


def test_a_served_archive_is_fetched_and_unpacked(tmp_path: Path, served: tuple[Path, str]) -> None:
    folder, base = served
    archive = good_zip(folder / "data.zip", _image_bytes(tmp_path))
    root = tmp_path / "cache" / "data"
    fetch(f"{base}/data.zip", root, sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == [
        "train/ants/ants_0.jpg", "train/bees/bees_0.jpg", "val/ants/ants_0.jpg", "val/bees/bees_0.jpg"
    ]
    assert _leftovers(root.parent, root) == [root]  # no .download or .unpack-* left


def test_sha256_mismatch_is_an_error_and_leaves_nothing(tmp_path: Path, served: tuple[Path, str]) -> None:
    folder, base = served
    good_zip(folder / "data.zip", _image_bytes(tmp_path))
    root = tmp_path / "cache" / "data"
    with pytest.raises(DataError, match="does not match dataset.sha256"):
        fetch(f"{base}/data.zip", root, sha256="0" * 64)
    assert _leftovers(root.parent, root) == []


def test_a_failed_download_is_an_error_and_leaves_nothing(tmp_path: Path, served: tuple[Path, str]) -> None:
    _, base = served
    root = tmp_path / "cache" / "data"
    for url in (f"{base}/missing.zip", "file:///nonexistent/data.zip", "not a url"):
        with pytest.raises(DataError, match="could not be fetched"):
            fetch(url, root)
    assert _leftovers(root.parent, root) == []


@pytest.mark.parametrize(
    ("name", "symlink", "words"),
    [
        ("../escaped.txt", False, "outside the target"),
        ("data/../../escaped.txt", False, "outside the target"),
        ("/tmp/escaped-abs.txt", False, "outside the target"),
        ("C:/escaped.txt", False, "outside the target"),
        ("data/link", True, "symbolic link"),
    ],
)
def test_zip_members_escaping_the_target_are_refused(tmp_path: Path, name: str, symlink: bool, words: str) -> None:
    archive = zip_with(tmp_path / "evil.zip", name, b"/etc/passwd" if symlink else b"escape", symlink)
    url = archive.resolve().as_uri()  # file:// goes through the same download path
    root = tmp_path / "target" / "data"
    with pytest.raises(DataError, match=words) as info:
        fetch(url, root)
    assert url in str(info.value)
    assert _leftovers(root.parent, root) == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "target" / "escaped.txt").exists()
    assert not Path("/tmp/escaped-abs.txt").exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_tar_members_escaping_the_target_are_refused(tmp_path: Path, kind: str) -> None:
    archive = tar_with(tmp_path / "evil.tar.gz", kind)
    root = tmp_path / "target" / "data"
    with pytest.raises(DataError, match="refused"):
        unpack(archive, root)
    assert _leftovers(root.parent, root) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_a_damaged_archive_is_an_error(tmp_path: Path) -> None:
    archive = good_zip(tmp_path / "data.zip", _image_bytes(tmp_path))
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    root = tmp_path / "target" / "data"
    with pytest.raises(DataError):
        unpack(archive, root)
    assert _leftovers(root.parent, root) == []


def test_imagefolder_fetches_from_a_recipe_url(tmp_path: Path, served: tuple[Path, str], plugins: object) -> None:
    from tlkit.recipe.loader import load_recipe

    folder, base = served
    archive = good_zip(folder / "data.zip", _image_bytes(tmp_path))
    root = tmp_path / "data"
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(
        f"dataset: {{root: {root}, download: '{base}/data.zip', sha256: {hashlib.sha256(archive.read_bytes()).hexdigest()}}}\n"
    )
    recipe = load_recipe(recipe_path, plugins)  # type: ignore[arg-type]
    loaded = recipe.dataset.spec.load(recipe.dataset.options)
    assert loaded.classes == ("ants", "bees") and len(loaded.splits["train"]) == 2
