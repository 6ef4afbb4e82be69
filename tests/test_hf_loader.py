"""The ``hf_datasets`` loader: an image set saved by Hugging Face ``datasets`` (arrow or parquet) gives the folder run.

The copies are written with the ``datasets`` package (the test extra); tlkit reads them with pyarrow alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import load_listing, make_image_folder, write_recipe

from tlkit.contract.plugin_manager import load_plugins
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run

datasets = pytest.importorskip("datasets")


def folder_listing(plugins, root: Path):
    spec = plugins.datasets.get("imagefolder")
    return spec.load(spec.options(root=str(root)))


def save_copy(plugins, root: Path, out: Path, *, names: tuple[str, str] = ("train", "val"), class_label: bool = True, parquet: bool = False) -> Path:
    """The folder's images (their bytes, in the folder loader's order) as a ``datasets`` copy: save_to_disk or hub Parquet."""
    listed = folder_listing(plugins, root)
    label = datasets.ClassLabel(names=list(listed.classes)) if class_label else datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    parts = {}
    for split, name in zip(("train", "test"), names):
        samples = listed.splits[split]
        labels = [s.label if class_label else listed.classes[s.label] for s in samples]
        images = [{"bytes": s.path.read_bytes(), "path": s.path.name} for s in samples]
        parts[name] = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    if parquet:
        for name, part in parts.items():
            part.to_parquet(str(out / "data" / f"{name}-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict(parts).save_to_disk(str(out))
    return out


def load(plugins, **options):
    return load_listing(plugins, "hf_datasets", **options)


def test_a_saved_copy_run_equals_the_folder_run_and_shares_its_cache(tiny_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("ants", "bees", "wasps"), n_train=5, n_test=3)
    saved = save_copy(tiny_plugins, root, tmp_path / "saved")
    folder_run = run(load_recipe(write_recipe(tmp_path / "f.yaml", root), tiny_plugins), tmp_path / "folder")
    recipe = write_recipe(tmp_path / "h.yaml", root, dataset={"name": "hf_datasets", "root": str(saved), "test": "val"})
    copy_run = run(load_recipe(recipe, tiny_plugins), tmp_path / "copy")
    assert copy_run.metrics.features["cached"] == 24 and copy_run.metrics.features["extracted"] == 0  # the same bytes, the same keys
    assert copy_run.metrics.test_accuracy == folder_run.metrics.test_accuracy
    assert copy_run.metrics.history == folder_run.metrics.history


def test_a_copy_decodes_its_own_bytes_to_the_folder_features(tiny_plugins, tmp_path, monkeypatch):
    """With an empty cache the images are decoded from the table's bytes (no file written) and give the folder run."""
    root = make_image_folder(tmp_path / "data", n_train=4, n_test=2)
    saved = save_copy(tiny_plugins, root, tmp_path / "saved", parquet=True)
    folder_run = run(load_recipe(write_recipe(tmp_path / "f.yaml", root), tiny_plugins), tmp_path / "folder")
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "other-cache"))
    recipe = write_recipe(tmp_path / "h.yaml", root, dataset={"name": "hf_datasets", "root": str(saved), "test": "val"}, extract={"workers": 2})
    copy_run = run(load_recipe(recipe, tiny_plugins), tmp_path / "copy")
    assert copy_run.metrics.features["extracted"] == 12 and copy_run.metrics.features["cached"] == 0
    assert copy_run.metrics.history == folder_run.metrics.history
    assert sorted(p.name for p in saved.rglob("*") if p.is_file()) == ["train-00000-of-00001.parquet", "val-00000-of-00001.parquet"]
    # `tlkit features` of the copy's run lists the tables again and reads the images from them: the folder run's features
    import numpy as np

    from tlkit.cli.app import main

    for name in ("folder", "copy"):
        monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / f"cache-{name}"))
        with pytest.raises(SystemExit) as info:
            main(["features", str(tmp_path / name), "--out", str(tmp_path / f"{name}.npz")])
        assert info.value.code == 0
    with np.load(tmp_path / "folder.npz") as folder, np.load(tmp_path / "copy.npz") as copy:
        assert copy["x_train"].shape == (8, 8) and np.array_equal(copy["x_train"], folder["x_train"]) and np.array_equal(copy["y_test"], folder["y_test"])


def test_parquet_and_save_to_disk_list_the_folder_images(builtins, tmp_path):
    import hashlib

    root = make_image_folder(tmp_path / "data", classes=("ants", "bees"), n_train=3, n_test=2)
    expected = folder_listing(builtins, root)
    for form, saved in (("arrow", save_copy(builtins, root, tmp_path / "saved")), ("parquet", save_copy(builtins, root, tmp_path / "hub", parquet=True))):
        loaded = load(builtins, root=str(saved), test="val")
        assert loaded.classes == expected.classes, form
        for split in ("train", "test"):
            assert [s.label for s in loaded.splits[split]] == [s.label for s in expected.splits[split]], form
            assert [s.member.sha256 for s in loaded.splits[split]] == [hashlib.sha256(s.path.read_bytes()).hexdigest() for s in expected.splits[split]]
        assert loaded.splits["train"][0].path.name == "000000" and loaded.splits["train"][0].path.parent.name == "image"


def test_string_labels_and_a_set_without_splits(builtins, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("ants", "bees"), n_train=5, n_test=1)
    saved = save_copy(builtins, root, tmp_path / "strings", class_label=False)
    assert load(builtins, root=str(saved), test="val").classes == ("ants", "bees")
    listed = folder_listing(builtins, root)
    images = [{"bytes": s.path.read_bytes(), "path": None} for s in listed.splits["train"]]
    one = datasets.Dataset.from_dict({"picture": images, "kind": [listed.classes[s.label] for s in listed.splits["train"]]},
                                     features=datasets.Features({"picture": datasets.Image(), "kind": datasets.Value("string")}))
    one.save_to_disk(str(tmp_path / "one"))
    data = load(builtins, root=str(tmp_path / "one"), label="kind", split={"test_fraction": 0.4, "seed": 1})
    assert sorted(s.label for s in data.splits["test"]) == [0, 0, 1, 1]  # 40% of each class's 5
    assert any("no test split: 40% of each class held out" in n for n in data.notes)
    assert [s.path for s in load(builtins, root=str(tmp_path / "one"), label="kind", split={"test_fraction": 0.4, "seed": 1}).splits["test"]] == [s.path for s in data.splits["test"]]


def test_reading_a_copy_never_needs_datasets(tmp_path, builtins, monkeypatch):
    """pyarrow alone: with ``datasets`` made unimportable the copy still loads, and neither module names it."""
    import ast

    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    saved = save_copy(builtins, root, tmp_path / "saved")
    monkeypatch.setitem(sys.modules, "datasets", None)  # any `import datasets` now raises ImportError
    assert len(load(builtins, root=str(saved), test="val").splits["train"]) == 4
    repo = Path(__file__).resolve().parent.parent
    for module in (repo / "tlkit_plugins" / "datasets" / "hf_datasets.py", repo / "tlkit" / "sources" / "image_tables.py"):
        imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(module.read_text())) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(module.read_text())) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"datasets", "pickle", "dill", "pandas"}, module


def test_misnamed_splits_and_columns_suggest_the_closest(builtins, tmp_path):
    from tlkit.errors import DataError

    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    saved = save_copy(builtins, root, tmp_path / "saved", names=("train", "validation"))
    with pytest.raises(DataError, match=r"has no split 'valdation'; did you mean 'validation'\?.*set dataset.test"):
        load(builtins, root=str(saved), test="valdation")
    with pytest.raises(DataError, match=r"has no column 'imag'; did you mean 'image'\?"):
        load(builtins, root=str(saved), test="validation", image="imag")
    with pytest.raises(DataError, match=r"column 'label' holds int64, not images"):
        load(builtins, root=str(saved), test="validation", image="label")
    hub = save_copy(builtins, root, tmp_path / "hub", names=("train", "validation"), parquet=True)
    with pytest.raises(DataError, match=r"has no Parquet files of split 'valdation'; did you mean 'validation'\? \(it has validation\); set dataset.test"):
        load(builtins, root=str(hub), test="valdation")
    assert len(load(builtins, root=str(hub), test="validation").splits["test"]) == 2


@pytest.mark.slow
def test_ants_bees_as_a_csv_and_a_saved_copy_give_the_folder_accuracy(plugins, hymenoptera, tmp_path):
    """Must hold 6 of issue 19: the same 244 + 153 images as a CSV manifest and as a ``datasets`` copy (their bytes
    stored in Arrow) give the folder run's test accuracy with Lite0; the two later runs take every feature from the
    cache the folder run filled (same bytes, same keys)."""
    import csv

    import yaml

    from tlkit.cli.app import main

    listed = folder_listing(plugins, hymenoptera)
    with (tmp_path / "ants-bees.csv").open("w", newline="") as handle:  # outside the data: dataset.root confines it there
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split, name in (("train", "train"), ("test", "val")):
            writer.writerows([s.path.relative_to(hymenoptera).as_posix(), listed.classes[s.label], name] for s in listed.splits[split])
    saved = save_copy(plugins, hymenoptera, tmp_path / "ants-bees-hf")
    recipe = yaml.safe_load((Path(__file__).resolve().parent.parent / "recipes" / "hymenoptera.yaml").read_text())
    forms = {
        "folder": {"name": "imagefolder", "root": str(hymenoptera), "train": "train", "test": "val"},
        "csv": {"name": "csv", "file": str(tmp_path / "ants-bees.csv"), "root": str(hymenoptera), "test": "val"},
        "hf": {"name": "hf_datasets", "root": str(saved), "test": "val"},
    }
    metrics = {}
    for form, dataset in forms.items():
        (tmp_path / f"{form}.yaml").write_text(yaml.safe_dump({**recipe, "dataset": dataset}))
        with pytest.raises(SystemExit) as info:
            main(["run", str(tmp_path / f"{form}.yaml"), "--set", "backbone.name=efficientnet_lite0", "--out", str(tmp_path / form)])
        assert info.value.code == 0, form
        metrics[form] = json.loads((tmp_path / form / "metrics.json").read_text())
    assert metrics["folder"]["counts"] == {"train": 244, "test": 153}
    assert metrics["folder"]["test_accuracy"] >= 0.93  # 0.941 with these weights
    for form in ("csv", "hf"):
        assert metrics[form]["counts"] == metrics["folder"]["counts"], form
        assert metrics[form]["test_accuracy"] == metrics["folder"]["test_accuracy"], form
        assert metrics[form]["features"]["extracted"] == 0 and metrics[form]["features"]["cached"] == 397, form


def test_exclusions_leave_table_images_out_by_their_shown_path(tiny_plugins, tmp_path):
    """``dataset.exclude`` works for table images as for files: a path relative to the copy's root leaves that row out."""
    root = make_image_folder(tmp_path / "data", n_train=4, n_test=2)
    saved = save_copy(tiny_plugins, root, tmp_path / "saved")
    (tmp_path / "exclude.txt").write_text("# a leaked copy\ntrain/data-00000-of-00001.arrow/image/000002\n")
    recipe = write_recipe(tmp_path / "h.yaml", root, dataset={"name": "hf_datasets", "root": str(saved), "test": "val", "exclude": str(tmp_path / "exclude.txt")})
    result = run(load_recipe(recipe, tiny_plugins), tmp_path / "run")
    assert result.metrics.counts == {"train": 7, "test": 4}
    assert "train/data-00000-of-00001.arrow/image/000002" in (tmp_path / "run" / "excluded.csv").read_text()



def test_fine_tuning_on_a_saved_copy_is_refused_in_one_line_before_any_training(tmp_path):
    """mode: finetune reopens files every epoch; table images are refused up front (it once trained on nothing and crashed writing NaN)."""
    from finetune_helpers import TinyBNPlugin, make_data, recipe_data

    from tlkit.errors import RecipeError
    from tlkit.recipe.loader import resolve

    plugins = load_plugins(entry_points=False, extra=[TinyBNPlugin()])
    root = make_data(tmp_path / "data")
    raw = recipe_data(root)
    raw["dataset"] = {"name": "hf_datasets", "root": str(save_copy(plugins, root, tmp_path / "saved")), "test": "val"}
    with pytest.raises(RecipeError) as info:
        run(resolve(raw, plugins), tmp_path / "copy")
    message = str(info.value)
    assert "\n" not in message and "mode: finetune" in message and "'hf_datasets'" in message and "mode: extract" in message
    assert not (tmp_path / "copy").exists()  # nothing written
