"""The recipe loader: YAML + --set overrides -> validated Recipe, with one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tlkit.errors import RecipeError
from tlkit.recipe.loader import ExtractSettings, apply_overrides, load_recipe, resolve

REPO = Path(__file__).resolve().parent.parent


def test_shipped_recipe_is_the_reference(plugins):
    recipe = load_recipe(REPO / "recipes" / "hymenoptera.yaml", plugins)
    assert recipe.name == "hymenoptera"
    assert recipe.backbone.name == "resnet18" and recipe.weights.kind == "pretrained"
    assert recipe.head.name == "linear"
    opts = recipe.head.options
    assert (opts.lr, opts.epochs, opts.momentum, opts.weight_decay) == (1e-3, 1000, 0.0, 0.0)
    assert recipe.dataset.options.root == "data/hymenoptera_data"
    assert recipe.dataset.options.download.endswith("hymenoptera_data.zip")
    assert recipe.dataset.options.test == "val"


def test_defaults_are_filled(plugins):
    recipe = resolve({"dataset": {"root": "x"}}, plugins)
    assert recipe.backbone.name == "resnet18" and recipe.head.name == "linear"
    assert recipe.extract == ExtractSettings()
    assert recipe.to_dict()["head"] == {"name": "linear", "lr": 1e-3, "epochs": 1000, "momentum": 0.0, "weight_decay": 0.0, "eval_every": 100, "standardize": True}


def test_resolved_recipe_round_trips(plugins, tmp_path):
    recipe = load_recipe(REPO / "recipes" / "hymenoptera.yaml", plugins, ["head.epochs=5", "backbone.weights=none"])
    saved = tmp_path / "r.yaml"
    saved.write_text(yaml.safe_dump(recipe.to_dict()))
    again = load_recipe(saved, plugins)
    assert again.to_dict() == recipe.to_dict()


def test_overrides_parse_yaml_scalars(plugins):
    data = apply_overrides({"head": {"lr": 0.1}}, ["head.lr=0.01", "head.epochs=7", "extract.cache=false", "backbone.weights=null", "name=x"])
    assert data == {"head": {"lr": 0.01, "epochs": 7}, "extract": {"cache": False}, "backbone": {"weights": None}, "name": "x"}
    recipe = resolve({**data, "dataset": {"root": "d"}}, plugins)
    assert recipe.head.options.lr == pytest.approx(0.01) and recipe.extract.cache is False


def test_overrides_do_not_touch_the_input():
    original = {"head": {"lr": 0.1}}
    apply_overrides(original, ["head.lr=0.5"])
    assert original == {"head": {"lr": 0.1}}


def test_float_written_without_dot_is_accepted(plugins):
    # PyYAML reads `1e-3` as a string; the validator still takes it as a number.
    recipe = resolve(yaml.safe_load("dataset: {root: d}\nhead: {lr: 1e-3}"), plugins)
    assert recipe.head.options.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        ({"dataset": {"root": "d"}, "hed": {}}, [], "unknown key 'hed'; did you mean 'head'?"),
        ({"dataset": {"root": "d"}}, ["head.lrr=1"], "unknown key 'head.lrr'; did you mean 'lr'?"),
        ({"dataset": {"root": "d"}}, ["backbone.name=resnet81"], "did you mean 'resnet18'"),
        ({"dataset": {"root": "d"}}, ["head.name=lineer"], "unknown head 'lineer'; did you mean 'linear'?"),
        ({"dataset": {"root": "d"}}, ["dataset.name=imagefoldr"], "did you mean 'imagefolder'"),
        ({"dataset": {"root": "d"}}, ["head.lr=abc"], "'head.lr': input should be a valid number"),
        ({"dataset": {"root": "d"}}, ["head.epochs=2.5"], "'head.epochs'"),
        ({"dataset": {"root": "d"}}, ["extract.batch_size=0"], "'extract.batch_size': input should be greater than 0"),
        ({"dataset": {"root": "d"}}, ["extract.precision=fp8"], "'extract.precision'"),
        ({"dataset": {}}, [], "'dataset.root' is required"),
        ({"dataset": ["root", "d"]}, [], "'dataset' must be a mapping"),
        ({"dataset": {"root": "d"}, "seed": -1}, [], "'seed' must be a non-negative integer"),
        ({"dataset": {"root": "d"}, "backbone": {"weights": 3}}, [], "'backbone.weights' must be a file path"),
        ({"dataset": {"root": "d"}}, ["head.lr"], "must look like dotted.key=value"),
        ({"dataset": {"root": "d"}}, ["dataset.root.x=1"], "'dataset.root' is not a section"),
    ],
)
def test_bad_recipes_name_the_key(plugins, data, overrides, message):
    with pytest.raises(RecipeError) as info:
        resolve(apply_overrides(data, overrides), plugins)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"- a\n- b\n", "must be a mapping of sections"),
        (b"dataset: {root: [\n", "is not valid YAML"),
        (b"dataset:\n  root: \xff\xfe\n", "is not UTF-8"),
        (b"!!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    ],
)
def test_bad_files_name_the_file(plugins, tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, plugins)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_recipe_file(plugins, tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml", plugins)


# --- issue 20's small things: the closest key, a cut --set item, where a relative root was looked for ---


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["head.nmae=knn"], "unknown key 'head.nmae'; did you mean 'name'?"),
        (["backbone.weight=none"], "unknown key 'backbone.weight'; did you mean 'weights'?"),
        (["dataset.nme=imagefolder"], "unknown key 'dataset.nme'; did you mean 'name'?"),
        (["dataset.split.test_frac=0.2"], "unknown key 'dataset.split.test_frac'; did you mean 'test_fraction'?"),
        (["dataset.split={test_fraction: 0.2, sed: 1}"], "unknown key 'dataset.split.sed'; did you mean 'seed'?"),
        (["dataset.split.zzzzzz=1"], "unknown key 'dataset.split.zzzzzz'; valid keys: test_fraction, seed"),
    ],
)
def test_a_misspelt_key_of_a_plugin_section_or_a_nested_section_gets_the_closest_key(plugins, overrides, message):
    with pytest.raises(RecipeError) as info:
        resolve(apply_overrides({"dataset": {"root": "d"}}, overrides), plugins)
    assert str(info.value) == message


def test_an_unquoted_set_item_cut_by_the_shell_gets_a_quoting_hint(plugins):
    # `--set dataset.split={test_fraction: 0.2}` unquoted reaches tlkit as two items, the first cut short
    with pytest.raises(RecipeError) as info:
        apply_overrides({"dataset": {"root": "d"}}, ["dataset.split={test_fraction:"])
    assert str(info.value) == (
        "--set 'dataset.split={test_fraction:' is cut short; the shell split it at a space: quote the whole item, --set 'dataset.split={test_fraction: ...}'"
    )
    assert apply_overrides({}, ["dataset.root=[old]photos"])["dataset"]["root"] == "[old]photos"  # not YAML, not cut: a plain string as before
    with pytest.raises(RecipeError, match="is cut short"):  # an unclosed bracket is refused: quote a string that holds one
        apply_overrides({}, ["dataset.root=[old"])
    assert apply_overrides({}, ["dataset.split={test_fraction: 0.2}"])["dataset"]["split"] == {"test_fraction": 0.2}


def test_the_cli_shows_the_cut_set_item_quoted_whole(tiny_plugins, tmp_path, capsys):
    from conftest import write_recipe

    from tlkit.cli.app import main

    recipe = write_recipe(tmp_path / "r.yaml", tmp_path)
    for argv, shown in (
        (["--set", "dataset.split={test_fraction:", "0.2}"], "--set 'dataset.split={test_fraction: 0.2}'"),
        (["--set", "dataset.split={test_fraction:", "0.2,", "seed:", "3}", "--set", "head.epochs=3"], "--set 'dataset.split={test_fraction: 0.2, seed: 3}'"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["run", str(recipe), *argv])
        err = capsys.readouterr().err
        assert info.value.code == 2 and "the shell split it at a space: quote the whole item" in err and shown in err, err
    with pytest.raises(SystemExit):
        main(["run", str(recipe), "--set", "head.epochs=3", "stray"])
    assert "quote" not in capsys.readouterr().err  # an extra argument that is no cut item gets no hint


def test_a_relative_dataset_root_is_looked_for_in_the_working_directory_and_the_error_says_so(plugins, tmp_path, monkeypatch):
    from tlkit.errors import DataError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    recipe = resolve({"dataset": {"root": "photos", "split": {"test_fraction": 0.5}}, "backbone": {"weights": "none"}}, plugins)
    load_imagefolder = recipe.dataset.spec.load  # the data set plugin itself, without building a backbone
    with pytest.raises(DataError, match="holds no images"):  # found: relative to the working directory
        load_imagefolder(recipe.dataset.options)
    missing = resolve({"dataset": {"root": "fotos", "split": {"test_fraction": 0.5}}}, plugins)
    with pytest.raises(DataError) as info:
        load_imagefolder(missing.dataset.options)
    assert str(info.value).startswith(f"data folder fotos (relative to the working directory {tmp_path}) does not exist")
    absolute = resolve({"dataset": {"root": str(tmp_path / "fotos")}}, plugins)
    with pytest.raises(DataError) as info:
        load_imagefolder(absolute.dataset.options)
    assert "working directory" not in str(info.value) and f"data folder {tmp_path / 'fotos'} does not exist" in str(info.value)
