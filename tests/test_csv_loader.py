"""The ``csv`` loader: a manifest of ``path,label[,split]`` rows gives the folder run, and says what is wrong by line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import CLASS_COLOURS, load_listing, make_image, make_image_folder, write_recipe

from tlkit.errors import DataError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run


def write_manifest(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("path", "label", "split")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def folder_manifest(plugins, root: Path, csv_file: Path, test_name: str = "val") -> Path:
    """The imagefolder loader's own listing of ``root`` as a manifest (same files, same order), paths relative to the CSV."""
    spec = plugins.datasets.get("imagefolder")
    listed = spec.load(spec.options(root=str(root)))
    rows = [[s.path.relative_to(csv_file.parent).as_posix(), listed.classes[s.label], "train" if split == "train" else test_name]
            for split in ("train", "test") for s in listed.splits[split]]
    return write_manifest(csv_file, rows)


def load(plugins, **options):
    return load_listing(plugins, "csv", **options)


def test_a_csv_run_equals_the_folder_run_and_shares_its_cache(tiny_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("ants", "bees", "wasps"), n_train=5, n_test=3)
    manifest = folder_manifest(tiny_plugins, root, root / "labels.csv")
    folder_run = run(load_recipe(write_recipe(tmp_path / "f.yaml", root), tiny_plugins), tmp_path / "folder")
    recipe = write_recipe(tmp_path / "c.yaml", root, dataset={"name": "csv", "file": str(manifest), "test": "val", "root": None})
    csv_run = run(load_recipe(recipe, tiny_plugins), tmp_path / "csv")
    assert csv_run.metrics.features["cached"] == 24 and csv_run.metrics.features["extracted"] == 0  # keyed by the files' bytes
    assert csv_run.metrics.test_accuracy == folder_run.metrics.test_accuracy
    assert csv_run.metrics.history == folder_run.metrics.history  # the same features in the same order
    assert (tmp_path / "csv" / "split.csv").read_text() == (tmp_path / "folder" / "split.csv").read_text()


def test_a_csv_elsewhere_reads_its_images_under_root(builtins, tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    manifest = write_manifest(tmp_path / "lists" / "m.csv", [["train/cats/cats_0.jpg", "cats", "train"], ["train\\dogs\\dogs_0.jpg", "dogs", "train"],
                                                              ["val/cats/cats_0.jpg", "cats", "test"]])
    loaded = load(builtins, file=str(manifest), root=str(root))
    assert loaded.classes == ("cats", "dogs")
    assert [s.path for s in loaded.splits["test"]] == [root / "val" / "cats" / "cats_0.jpg"]
    assert loaded.splits["train"][1].path == root / "train" / "dogs" / "dogs_0.jpg"  # a CSV saved on Windows


def test_without_a_split_column_each_class_is_split_by_the_seeded_rule(builtins, tmp_path):
    rows = []
    for index, (name, count) in enumerate((("cats", 10), ("dogs", 5), ("solo", 1))):
        for i in range(count):
            make_image(tmp_path / "img" / f"{name}_{i:02d}.jpg", CLASS_COLOURS[index], seed=100 * index + i)
            rows.append([f"img/{name}_{i:02d}.jpg", name])
    manifest = write_manifest(tmp_path / "m.csv", rows, header=("path", "label"))
    data = load(builtins, file=str(manifest), split={"test_fraction": 0.2, "seed": 3})
    test = [s.path.name for s in data.splits["test"]]
    assert sorted(s.label for s in data.splits["test"]) == [0, 0, 1]  # 20% of 10, of 5 (at least one), none of one
    assert any("'solo' has a single row: it stays in train" in note for note in data.notes)
    assert [s.path.name for s in load(builtins, file=str(manifest), split={"test_fraction": 0.2, "seed": 3}).splits["test"]] == test
    assert [s.path.name for s in load(builtins, file=str(manifest), split={"test_fraction": 0.2, "seed": 4}).splits["test"]] != test
    default = load(builtins, file=str(manifest))  # no split column and no split option: the rule's defaults
    assert len(default.splits["test"]) == 3 and any("no split column: 20% of each class" in n for n in default.notes)
    # the rows' order does not matter: each row's place depends on the seed and its path only
    write_manifest(tmp_path / "m.csv", rows[::-1], header=("path", "label"))
    assert sorted(s.path.name for s in load(builtins, file=str(manifest), split={"test_fraction": 0.2, "seed": 3}).splits["test"]) == sorted(test)


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["a.jpg", "cats", "train"]], ("path", "lable", "split"), r"m.csv: line 1: the header has no 'label' column; did you mean 'lable'\?.*set dataset.label_column"),
        ([["a.jpg", "cats", "trian"]], ("path", "label", "split"), r"m.csv: line 2: unknown split 'trian'; did you mean 'train'\?"),
        ([["a.jpg", "cats", "train"], ["a.jpg", "dogs", "test"]], ("path", "label", "split"), r"m.csv: line 3: 'a.jpg' is listed twice \(first on line 2\)"),
        ([["a.jpg", "cats", "train"], ["b.jpg", " ", "test"]], ("path", "label", "split"), r"m.csv: line 3: the label of 'b.jpg' is empty"),
        ([["a.jpg", "cats", "train"], ["c.jpg", "cats", "test"]], ("path", "label", "split"), r"m.csv: line 3: 'c.jpg' does not exist; did you mean '[ab].jpg'"),
        ([["a.jpg", "cats", "train"], ["b.jpg", "cast", "test"]], ("path", "label", "split"), r"m.csv: line 3: class 'cast' has no training rows; did you mean 'cats'\?"),
        ([["a.jpg", "cats"]], ("path", "label", "split"), r"m.csv: line 2: 2 cells, fewer than the header's columns"),
    ],
)
def test_what_is_wrong_is_one_line_naming_the_csv_and_its_line(builtins, tmp_path, rows, header, message):
    for name in ("a.jpg", "b.jpg"):
        make_image(tmp_path / name, CLASS_COLOURS[0])
    manifest = write_manifest(tmp_path / "m.csv", rows, header=header)
    with pytest.raises(DataError, match=message) as info:
        load(builtins, file=str(manifest))
    assert "\n" not in str(info.value)


def test_a_split_column_and_a_split_option_together_are_refused(builtins, tmp_path):
    make_image(tmp_path / "a.jpg", CLASS_COLOURS[0])
    manifest = write_manifest(tmp_path / "m.csv", [["a.jpg", "cats", "train"]])
    with pytest.raises(DataError, match="has a 'split' column; remove dataset.split"):
        load(builtins, file=str(manifest), split={"test_fraction": 0.5})
    with pytest.raises(DataError, match="does not exist; set dataset.file"):
        load(builtins, file=str(tmp_path / "nope.csv"))
