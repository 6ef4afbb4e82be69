"""The imagefolder data set loader: classes, image files, notes, class agreement, download."""

from __future__ import annotations

import zipfile

import pytest
from conftest import make_image_folder

from tlkit.errors import DataError
from tlkit_plugins.datasets.imagefolder import ImageFolderOptions, load_imagefolder


def test_loads_classes_and_files(image_folder):
    (image_folder / "train" / "cats" / "notes.txt").write_text("not an image")
    (image_folder / "train" / "cats" / ".DS_Store").write_bytes(b"\0")
    loaded = load_imagefolder(ImageFolderOptions(root=str(image_folder)))
    assert loaded.classes == ("cats", "dogs")
    assert len(loaded.splits["train"]) == 12 and len(loaded.splits["test"]) == 6
    assert {s.label for s in loaded.splits["test"]} == {0, 1}
    assert all(s.path.parent.name == loaded.classes[s.label] for s in loaded.splits["train"])
    assert "train: left out 2 files (hidden, not an image by name, or a broken link): cats/.DS_Store, cats/notes.txt" in loaded.notes


def test_hymenoptera_counts(hymenoptera):
    loaded = load_imagefolder(ImageFolderOptions(root=str(hymenoptera)))
    assert loaded.classes == ("ants", "bees")
    assert (len(loaded.splits["train"]), len(loaded.splits["test"])) == (244, 153)
    assert any(n.startswith("train: left out 1 file ") and "imageNotFound.gif" in n for n in loaded.notes)


def test_custom_split_names(tmp_path):
    root = make_image_folder(tmp_path / "d", test_name="test")
    loaded = load_imagefolder(ImageFolderOptions(root=str(root), test="test"))
    assert len(loaded.splits["test"]) == 6


def test_test_class_missing_from_train_is_an_error(image_folder):
    from conftest import make_image

    make_image(image_folder / "val" / "birds" / "b.jpg", (10, 10, 10))
    with pytest.raises(DataError, match="birds"):
        load_imagefolder(ImageFolderOptions(root=str(image_folder)))


def test_train_class_without_test_images_is_noted(image_folder):
    for f in (image_folder / "val" / "dogs").iterdir():
        f.unlink()
    loaded = load_imagefolder(ImageFolderOptions(root=str(image_folder)))
    assert "test: class 'dogs' has no images" in loaded.notes


@pytest.mark.parametrize("missing", ["root", "train", "val"])
def test_missing_folders_are_named(image_folder, missing):
    import shutil

    target = image_folder if missing == "root" else image_folder / missing
    shutil.rmtree(target)
    with pytest.raises(DataError) as info:
        load_imagefolder(ImageFolderOptions(root=str(image_folder)))
    assert str(target) in str(info.value)


def _zipped_folder(tmp_path):
    """A zip of ``mydata/{train,val}/...`` like the tutorial's archive (one top folder)."""
    source = make_image_folder(tmp_path / "src" / "mydata")
    archive = tmp_path / "mydata.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*")):
            zf.write(path, path.relative_to(source.parent))
    return archive


def test_downloads_and_unpacks_when_root_is_missing(tmp_path):
    archive = _zipped_folder(tmp_path)
    root = tmp_path / "data" / "mydata"
    loaded = load_imagefolder(ImageFolderOptions(root=str(root), download=archive.as_uri()))
    assert len(loaded.splits["train"]) == 12
    assert not list(root.parent.glob(".*"))  # no temporary download or staging folder left


def test_download_hash_mismatch_leaves_nothing(tmp_path):
    archive = _zipped_folder(tmp_path)
    root = tmp_path / "data" / "mydata"
    with pytest.raises(DataError, match="sha256"):
        load_imagefolder(ImageFolderOptions(root=str(root), download=archive.as_uri(), sha256="0" * 64))
    assert not root.exists() and not root.parent.exists()  # not even the data/ folder made for it


def test_unreachable_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    root = tmp_path / "data" / "x"
    with pytest.raises(DataError) as info:
        load_imagefolder(ImageFolderOptions(root=str(root), download="https://example.invalid/x.zip"))
    assert str(root) in str(info.value) and "https://example.invalid/x.zip" in str(info.value)
