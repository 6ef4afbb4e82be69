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
    assert recipe.to_dict()["head"] == {"name": "linear", "lr": 1e-3, "epochs": 1000, "momentum": 0.0, "weight_decay": 0.0, "eval_every": 100}


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
