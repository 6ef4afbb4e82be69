"""``tlkit.fit`` / ``tlkit.compare`` / ``tlkit.make_recipe``: the CLI's equal from Python, on the same engine.

A run from Python writes the run directory ``tlkit run`` writes and answers with its metrics, its model
(``predict``, ``export``) and its folder; a recipe built in Python fails with the very error a YAML
file gets; nothing is printed unless progress is asked for; the HTML shown in Jupyter escapes names.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import make_image, make_image_folder

import tlkit
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins
from tlkit.errors import DataError, RecipeError, TlkitError
from tlkit.recipe.loader import load_recipe

HEAD = {"name": "linear", "epochs": 30, "lr": 0.1, "eval_every": 10}


@pytest.fixture(scope="module")
def module_plugins() -> Plugins:
    """Built-ins plus ``tiny_cnn``, loaded once for the module (loading is the slow part of a tiny test)."""
    from tiny import TinyPlugin

    return load_plugins(entry_points=False, extra=[TinyPlugin()])


@pytest.fixture
def tiny_plugins(module_plugins: Plugins) -> Iterator[Plugins]:
    """The module's plugins as the process-wide ones for one test (what ``tlkit.fit`` uses)."""
    set_plugins(module_plugins)
    try:
        yield module_plugins
    finally:
        set_plugins(None)
EXTRACT = {"workers": 0, "batch_size": 4}


def _recorded(run_dir: Path) -> dict[str, tuple[str, float]]:
    with (run_dir / "predictions.csv").open(newline="") as fh:
        return {row["path"]: (row["predicted_class"], float(row["confidence"])) for row in csv.DictReader(fh)}


def test_fit_returns_the_metrics_the_model_and_the_run_directory(tiny_plugins: Plugins, image_folder: Path, tmp_path: Path, capsys) -> None:
    result = tlkit.fit(image_folder, backbone="tiny_cnn", head=HEAD, extract=EXTRACT, out=tmp_path / "run")
    assert capsys.readouterr() == ("", ""), "tlkit.fit prints nothing unless progress is asked for"
    assert result.run_dir == tmp_path / "run" and (result.run_dir / "run.json").is_file()
    assert result.metrics.to_dict()["test_accuracy"] == json.loads((result.run_dir / "metrics.json").read_text())["test_accuracy"]
    assert result.metrics.counts == {"train": 12, "test": 6}
    assert result.recipe.name == "data" and result.recipe.backbone.name == "tiny_cnn" and result.recipe.head.options.epochs == 30

    recorded = _recorded(result.run_dir)
    two = sorted(recorded)[:1] + sorted(recorded)[-1:]
    for prediction in result.predict(two):
        label, confidence = recorded[prediction.source]
        assert prediction.label == label and prediction.probability == pytest.approx(confidence, abs=1e-5)
    assert result.model is result.model  # loaded once

    exported = result.export("onnx")
    assert exported.path == result.run_dir / "model.onnx" and exported.path.is_file() and exported.max_difference <= 1e-4
    with pytest.raises(TlkitError, match="unknown export format 'tflite'"):
        result.export("tflite")
    assert capsys.readouterr().out == ""


def test_fit_puts_the_run_in_runs_under_the_working_directory_by_default(tiny_plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_folder(tmp_path / "photos", n_train=3, n_test=2)
    monkeypatch.chdir(tmp_path)
    result = tlkit.fit("photos", backbone="tiny_cnn", head="centroid", extract=EXTRACT)
    assert result.run_dir.parent == Path("runs") and result.run_dir.name.startswith("photos-")
    assert (tmp_path / result.run_dir / "run.json").is_file()
    assert "photos-" in repr(result) and "test_accuracy=" in repr(result)


def test_progress_true_shows_bars_and_notes_on_stderr(tiny_plugins: Plugins, image_folder: Path, tmp_path: Path, capsys) -> None:
    tlkit.fit(image_folder, backbone="tiny_cnn", head=HEAD, extract=EXTRACT, out=tmp_path / "run", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "training linear" in err and "30/30" in err, err[-500:]
    assert "backbone: tiny_cnn" in err


BAD_SECTIONS = [
    ({"backbon": {"name": "tiny_cnn"}}, "unknown key 'backbon'; did you mean 'backbone'?"),
    ({"backbone": {"name": "tiny_cn"}}, "unknown backbone 'tiny_cn'; did you mean 'tiny_cnn'?"),
    ({"head": {"name": "linear", "epoch": 3}}, "unknown key 'head.epoch'; did you mean 'epochs'?"),
    ({"head": {"name": "linear", "lr": "fast"}}, "'head.lr'"),
    ({"extract": {"workers": -1}}, "'extract.workers'"),
    ({"seed": -3}, "'seed' must be a non-negative integer"),
    ({"name": "../escape"}, "'name' must be a plain string"),
]


@pytest.mark.parametrize(("sections", "expected"), BAD_SECTIONS, ids=lambda v: str(v)[:30])
def test_a_recipe_built_in_python_fails_exactly_as_the_same_yaml_file(tiny_plugins: Plugins, tmp_path: Path, sections: dict, expected: str) -> None:
    base = {"dataset": {"root": str(tmp_path)}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, **sections}))
    with pytest.raises(RecipeError) as from_yaml:
        load_recipe(path, tiny_plugins)
    with pytest.raises(RecipeError) as from_python:
        tlkit.make_recipe(base, **sections)
    assert expected in str(from_python.value)
    assert str(from_yaml.value) == f"recipe {path}: {from_python.value}"
    with pytest.raises(RecipeError) as from_fit:  # fit builds its recipe the same way, before any image is read
        tlkit.fit(tmp_path, **sections)
    assert str(from_fit.value) == str(from_python.value)


def test_make_recipe_merges_sections_and_overrides_over_a_file(tiny_plugins: Plugins, tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "dataset": {"root": "x"}, "head": {"name": "linear", "epochs": 7, "lr": 0.5}}))
    recipe = tlkit.make_recipe(path, head={"epochs": 9}, overrides=["head.lr=0.25"])
    assert (recipe.name, recipe.source, recipe.head.options.epochs, recipe.head.options.lr) == ("r", path, 9, 0.25)
    other = tlkit.make_recipe(path, head="knn")  # another plugin: the linear head's options are not carried over
    assert other.head.name == "knn"
    again = tlkit.make_recipe(recipe, backbone="tiny_cnn")  # a Recipe is a starting point too
    assert again.head.options == recipe.head.options and again.backbone.name == "tiny_cnn"
    assert tlkit.make_recipe(path, overrides=["head.epochs=3"]).head.options.epochs == 3
    with pytest.raises(RecipeError, match="unknown key 'head.nmae'; did you mean 'name'"):
        tlkit.make_recipe(path, overrides=["head.nmae=knn"])
    with pytest.raises(RecipeError, match="not a int"):
        tlkit.make_recipe(42)  # type: ignore[arg-type]


def test_errors_are_tlkit_errors_not_exits(tiny_plugins: Plugins, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        tlkit.fit(tmp_path / "nowhere", backbone="tiny_cnn", extract=EXTRACT, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _hostile_folder(root: Path) -> str:
    """Two classes, one named like markup; one test image of each class looks like the other (two mistakes)."""
    hostile = "<img src=x onerror=alert(1)>"
    make_image_folder(root, classes=("plain", hostile), n_train=4, n_test=2)
    make_image(root / "val" / "plain" / "odd.jpg", (40, 200, 40), seed=7)
    return hostile


def test_the_html_shows_summary_confusion_and_mistakes_with_every_name_escaped(tiny_plugins: Plugins, tmp_path: Path) -> None:
    hostile = _hostile_folder(tmp_path / "data")
    result = tlkit.fit(tmp_path / "data", backbone="tiny_cnn", head="centroid", extract=EXTRACT, out=tmp_path / "run")
    page = result._repr_html_()
    assert hostile not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script" not in page and "onerror=alert(1)>" not in page
    assert "test confusion matrix" in page and "test accuracy" in page and str(result.run_dir) in page
    matrix = result.metrics.test.confusion_matrix
    assert sum(map(sum, matrix)) == 5 and result.errors, "the odd image is a mistake"
    assert "most confident mistakes" in page and "odd.jpg" in page


def test_compare_ranks_heads_and_renders(tiny_plugins: Plugins, image_folder: Path, tmp_path: Path, capsys) -> None:
    result = tlkit.compare(image_folder, backbones="tiny_cnn", heads="linear,centroid", head=HEAD, extract=EXTRACT, out=tmp_path / "cmp")
    assert capsys.readouterr() == ("", "")
    assert [row["rank"] for row in result.table] == [1, 2] and {row["head"] for row in result.table} == {"linear", "centroid"}
    assert result.best is result.results[0] and result.files["json"] == tmp_path / "cmp" / "compare.json"
    assert json.loads(result.files["json"].read_text())["results"] == json.loads(json.dumps(result.table))
    assert "tlkit compare" in result._repr_html_() and "tiny_cnn" in repr(result)
    with pytest.raises(RecipeError, match="matches no registered backbone"):
        tlkit.compare(image_folder, backbones=["tiny_cn"], extract=EXTRACT, out=tmp_path / "cmp2")
    with pytest.raises(RecipeError, match="heads: give head names"):
        tlkit.compare(image_folder, backbones="tiny_cnn", heads=["linear", ""], out=tmp_path / "cmp3")
