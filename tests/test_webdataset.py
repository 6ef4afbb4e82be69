"""WebDataset shards: `tlkit shards make`, the `webdataset` loader, and runs that stream shard members."""

from __future__ import annotations

import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from conftest import make_image_folder, write_recipe

from tlkit.cli.app import main
from tlkit.errors import DataError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run
from tlkit.sources.shards import make_from_folder, stream


def _make(tmp_path: Path, plugins, shard_size: int = 4, **folder):
    root = make_image_folder(tmp_path / "data", **folder)
    return root, make_from_folder(plugins, root, tmp_path / "shards", shard_size)


def _load(plugins, train: str, test: str, **options):
    spec = plugins.datasets.get("webdataset")
    return spec.load(spec.options(train=train, test=test, **options))


def test_shards_make_writes_tars_of_the_folder_bytes(tiny_plugins, tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", n_train=5, n_test=2)
    with pytest.raises(SystemExit) as info:
        main(["shards", "make", str(root), str(tmp_path / "shards"), "--shard-size", "4"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "train-{000000..000002}.tar" in out and "dataset.name=webdataset" in out
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["classes.json", "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    with tarfile.open(tmp_path / "shards" / "train-000000.tar") as tar:
        names = tar.getnames()
        assert sorted(names[:3]) == ["000000.cls", "000000.jpg", "000000.json"]
        assert tar.extractfile("000000.jpg").read() == (root / "train" / "cats" / "cats_0.jpg").read_bytes()
        assert json.loads(tar.extractfile("000000.json").read()) == {"class": "cats", "label": 0, "path": "train/cats/cats_0.jpg"}


def test_the_loader_lists_the_same_samples_as_the_folder(tiny_plugins, tmp_path):
    root, written = _make(tmp_path, tiny_plugins, classes=("ants", "bees", "wasps"), n_train=3, n_test=2)
    folder = tiny_plugins.datasets.get("imagefolder")
    expected = folder.load(folder.options(root=str(root)))
    loaded = _load(tiny_plugins, written.pattern("train"), written.pattern("test"))
    assert loaded.classes == expected.classes
    for split in ("train", "test"):
        assert [s.label for s in loaded.splits[split]] == [s.label for s in expected.splits[split]]
        import hashlib

        assert [s.member.sha256 for s in loaded.splits[split]] == [hashlib.sha256(s.path.read_bytes()).hexdigest() for s in expected.splits[split]]
    # without classes.json the .json class names give the same classes; with a class list in another order, labels follow it
    (tmp_path / "shards" / "classes.json").unlink()
    assert _load(tiny_plugins, written.pattern("train"), written.pattern("test")).classes == ("ants", "bees", "wasps")
    names = tmp_path / "names.txt"
    names.write_text("ants\nbees\nwasps\n")
    assert _load(tiny_plugins, written.pattern("train"), written.pattern("test"), classes=str(names)).classes == ("ants", "bees", "wasps")


def test_a_webdataset_run_equals_the_folder_run(tiny_plugins, tmp_path, monkeypatch):
    root, written = _make(tmp_path, tiny_plugins, n_train=9, n_test=4)
    folder_run = run(load_recipe(write_recipe(tmp_path / "f.yaml", root), tiny_plugins), tmp_path / "folder")
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "other-cache"))  # decode the shards, not the folder run's cache
    recipe = write_recipe(tmp_path / "w.yaml", root, dataset={"name": "webdataset", "train": written.pattern("train"), "test": written.pattern("test"), "root": None})
    data = __import__("yaml").safe_load(recipe.read_text())
    del data["dataset"]["root"]
    data["extract"]["workers"] = 2
    recipe.write_text(__import__("yaml").safe_dump(data))
    shard_run = run(load_recipe(recipe, tiny_plugins), tmp_path / "shards-run")
    assert shard_run.metrics.features["extracted"] == 26 and shard_run.metrics.features["cached"] == 0
    assert shard_run.metrics.test_accuracy == folder_run.metrics.test_accuracy
    assert shard_run.metrics.train_accuracy == folder_run.metrics.train_accuracy
    assert shard_run.metrics.history == folder_run.metrics.history  # same features, so the same training curve
    again = run(load_recipe(recipe, tiny_plugins), tmp_path / "again")
    assert again.metrics.features["cached"] == 26  # keyed by the members' bytes


def test_listing_memory_stays_flat_in_the_number_of_shards(tiny_plugins, tmp_path):
    """Peak Python memory while listing 64 large images: one shard or 32, it is about one image, not a shard."""
    import random

    from PIL import Image

    rng = random.Random(0)
    root = tmp_path / "data"
    for split, count in (("train", 32), ("val", 1)):
        for name in ("cats", "dogs"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):  # noise does not compress: ~190 KB per PNG
                Image.frombytes("RGB", (256, 256), rng.randbytes(256 * 256 * 3)).save(root / split / name / f"{i}.png")
    peaks = {}
    for size in (64, 2):
        written = make_from_folder(tiny_plugins, root, tmp_path / f"s{size}", size)
        tracemalloc.start()
        loaded = _load(tiny_plugins, written.pattern("train"), written.pattern("test"))
        peaks[size] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(loaded.splits["train"]) == 64
    shard_bytes = sum(p.stat().st_size for p in (tmp_path / "s64").glob("train-*.tar"))
    assert peaks[64] < shard_bytes / 4 and peaks[2] < shard_bytes / 4, (peaks, shard_bytes)
    assert abs(peaks[2] - peaks[64]) < shard_bytes / 8, (peaks, shard_bytes)


def test_bad_shards_and_classes_are_one_line_naming_them(tiny_plugins, tmp_path):
    _, written = _make(tmp_path, tiny_plugins, n_train=2, n_test=1)
    with pytest.raises(DataError, match=r"shard .*train-000009.tar does not exist; check 'dataset.train'"):
        _load(tiny_plugins, str(tmp_path / "shards" / "train-000009.tar"), written.pattern("test"))
    names = tmp_path / "names.txt"
    names.write_text("cats\n")
    with pytest.raises(DataError, match="class index 1 is outside the 1 classes of the class list"):
        _load(tiny_plugins, written.pattern("train"), written.pattern("test"), classes=str(names))
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="cannot read shard .*junk.tar"):
        list(stream([str(tmp_path / "junk.tar")]))
