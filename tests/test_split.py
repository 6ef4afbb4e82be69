"""``imagefolder`` with ``split: {test_fraction, seed}``: one folder of class folders (or a root
with train/ only) split here, stratified and deterministic, a one-image class kept in train, and
the split recorded in the run directory so ``predict`` and a rerun agree with the run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import CLASS_COLOURS, make_image

from tlkit.errors import DataError, RecipeError
from tlkit.recipe.loader import resolve


def photos(root: Path, counts: dict[str, int]) -> Path:
    for index, (name, n) in enumerate(counts.items()):
        for i in range(n):
            make_image(root / name / f"{name}_{i:02d}.jpg", CLASS_COLOURS[index], seed=100 * index + i)
    return root


def load(plugins, root: Path, **split) -> object:
    recipe = resolve({"dataset": {"root": str(root), "split": split}, "backbone": {"name": "tiny_cnn"}}, plugins)
    return recipe.dataset.spec.load(recipe.dataset.options)


def names(samples) -> list[str]:
    return [s.path.name for s in samples]


def test_a_folder_of_class_folders_is_split_stratified_and_deterministically(tiny_plugins, tmp_path: Path) -> None:
    root = photos(tmp_path / "photos", {"cats": 10, "dogs": 5, "solo": 1})
    data = load(tiny_plugins, root, test_fraction=0.2, seed=3)
    assert data.classes == ("cats", "dogs", "solo")
    test = data.splits["test"]
    assert sorted(s.label for s in test) == [0, 0, 1]  # 20% of 10, of 5 (at least one); none of a single image
    assert "solo_00.jpg" in names(data.splits["train"])
    assert any("'solo' has a single image: it stays in train" in note for note in data.notes)
    assert set(names(test)).isdisjoint(names(data.splits["train"])) and len(test) + len(data.splits["train"]) == 16
    again = load(tiny_plugins, root, test_fraction=0.2, seed=3)
    assert names(again.splits["test"]) == names(test)
    other = load(tiny_plugins, root, test_fraction=0.2, seed=4)
    assert names(other.splits["test"]) != names(test)
    # adding photos does not reshuffle the others: every old test image of a class whose share stayed the same stays in test
    make_image(root / "cats" / "cats_new.jpg", CLASS_COLOURS[0], seed=999)
    grown = load(tiny_plugins, root, test_fraction=0.2, seed=3)
    assert [n for n in names(test) if n.startswith("dogs")] == [n for n in names(grown.splits["test"]) if n.startswith("dogs")]


def test_a_root_with_train_only_is_split_the_same_way(tiny_plugins, tmp_path: Path) -> None:
    photos(tmp_path / "flat", {"cats": 6, "dogs": 6})
    photos(tmp_path / "nested" / "train", {"cats": 6, "dogs": 6})
    flat = load(tiny_plugins, tmp_path / "flat", test_fraction=0.5, seed=0)
    nested = load(tiny_plugins, tmp_path / "nested", test_fraction=0.5, seed=0)
    assert names(flat.splits["test"]) == names(nested.splits["test"]) and len(flat.splits["test"]) == 6


def test_split_mistakes_are_clear_errors(tiny_plugins, tmp_path: Path) -> None:
    photos(tmp_path / "both" / "train", {"cats": 3})
    photos(tmp_path / "both" / "val", {"cats": 2})
    with pytest.raises(DataError, match="already has 'train' and 'val' sub-folders; remove dataset.split"):
        load(tiny_plugins, tmp_path / "both", test_fraction=0.2)
    with pytest.raises(DataError, match="no class has two images"):
        load(tiny_plugins, photos(tmp_path / "singles", {"a": 1, "b": 1}), test_fraction=0.2)
    with pytest.raises(RecipeError, match="dataset.split"):
        load(tiny_plugins, tmp_path / "singles", test_fraktion=0.2)
    with pytest.raises(RecipeError, match="dataset.split.test_fraction"):
        load(tiny_plugins, tmp_path / "singles", test_fraction=1.5)
    unsplit = resolve({"dataset": {"root": str(tmp_path / "singles")}, "backbone": {"name": "tiny_cnn"}}, tiny_plugins).dataset
    with pytest.raises(DataError, match="or dataset.split: {test_fraction: 0.2}"):
        unsplit.spec.load(unsplit.options)


def split_csv(run_dir: Path) -> list[tuple[str, str, str]]:
    with (run_dir / "split.csv").open(newline="") as fh:
        return [(r["split"], r["path"], r["class"]) for r in csv.DictReader(fh)]


def run_split(plugins, root: Path, out: Path, backbone: dict, seed: int = 7, head: str = "logreg") -> Path:
    from tlkit.run.engine import run

    recipe = resolve(
        {"name": "split", "dataset": {"root": str(root), "split": {"test_fraction": 0.2, "seed": seed}}, "backbone": backbone,
         "extract": {"workers": 0}, "head": {"name": head}},
        plugins,
    )
    return run(recipe, out).out_dir


def check_predict_agrees(run_dir: Path, capsys) -> None:
    from tlkit.cli.app import main

    with (run_dir / "predictions.csv").open(newline="") as fh:
        row = next(csv.DictReader(fh))
    assert ("test", row["path"], row["true_class"]) in split_csv(run_dir)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run_dir), row["path"], "--json"])
    assert exit_info.value.code == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[0])
    assert answer["class"] == row["predicted_class"] and answer["probability"] == pytest.approx(float(row["confidence"]), abs=1e-6)


def test_a_split_run_records_its_split_and_predict_agrees(tiny_plugins, tmp_path: Path, capsys) -> None:
    root = photos(tmp_path / "photos", {"cats": 8, "dogs": 8, "fish": 1})
    first = run_split(tiny_plugins, root, tmp_path / "a", {"name": "tiny_cnn"})
    second = run_split(tiny_plugins, root, tmp_path / "b", {"name": "tiny_cnn"})
    rows = split_csv(first)
    assert rows == split_csv(second) and len(rows) == 17
    assert sum(1 for split, _, _ in rows if split == "test") == 4 and ("train", str(root / "fish" / "fish_00.jpg"), "fish") in rows
    assert json.loads((first / "metrics.json").read_text())["counts"] == {"train": 13, "test": 4}
    check_predict_agrees(first, capsys)


@pytest.mark.slow
def test_ants_and_bees_pooled_into_one_folder_split_end_to_end(plugins, hymenoptera: Path, tmp_path: Path, capsys) -> None:
    """Must hold 1 of issue 14: train and val pooled (as links) into photos/<class>/, split 80/20."""
    pooled = tmp_path / "photos"
    for split in ("train", "val"):
        for image in sorted((hymenoptera / split).glob("*/*.jpg")):
            target = pooled / image.parent.name / f"{split}_{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(image)
    backbone = {"name": "efficientnet_lite0"}
    first = run_split(plugins, pooled, tmp_path / "a", backbone)
    second = run_split(plugins, pooled, tmp_path / "b", backbone)  # features from the cache: seconds
    assert split_csv(first) == split_csv(second)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (first, second)]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"] >= 0.9
    assert metrics[0]["counts"]["test"] == sum(1 for s, _, _ in split_csv(first) if s == "test") >= 75
    check_predict_agrees(first, capsys)
