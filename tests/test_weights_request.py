"""``backbone.weights`` is parsed once into a typed request: null, "none", a path, or a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tlkit
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import RecipeError


def test_null_is_the_default_pretrained_weights() -> None:
    request = WeightsRequest.parse(None)
    assert (request.kind, request.path) == ("pretrained", None)
    assert request.to_value() is None


@pytest.mark.parametrize("value", ["none", "None", "NONE", " none "])
def test_none_is_random(value: str) -> None:
    request = WeightsRequest.parse(value)
    assert (request.kind, request.path) == ("random", None)
    assert request.to_value() == "none"


def test_a_relative_path_is_taken_against_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    request = WeightsRequest.parse("weights/r18.pth")
    assert request.kind == "file" and request.path == tmp_path / "weights" / "r18.pth"
    monkeypatch.chdir("/")
    assert request.path == tmp_path / "weights" / "r18.pth"  # fixed when parsed, not when used


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert WeightsRequest.parse("~/w.safetensors").path == tmp_path / "w.safetensors"


def test_round_trip_through_the_recipe_value(tmp_path: Path) -> None:
    for request in (WeightsRequest.pretrained(), WeightsRequest.random(), WeightsRequest.file(tmp_path / "a.pth")):
        assert WeightsRequest.parse(request.to_value()) == request
        assert WeightsRequest.parse(request) is request


@pytest.mark.parametrize("value", [3, 2.5, True, [], {"path": "x"}, "", "   ", "a\x00b"])
def test_a_bad_value_is_a_recipe_error_naming_the_key(value: object) -> None:
    with pytest.raises(RecipeError, match="'backbone.weights'") as info:
        WeightsRequest.parse(value)
    assert "\n" not in str(info.value)


def test_requests_are_frozen_and_consistent(tmp_path: Path) -> None:
    request = WeightsRequest.random()
    with pytest.raises(AttributeError):
        request.kind = "file"  # type: ignore[misc]
    with pytest.raises(ValueError):
        WeightsRequest("file")
    with pytest.raises(ValueError):
        WeightsRequest("random", tmp_path)
    with pytest.raises(ValueError):
        WeightsRequest("imagenet")  # type: ignore[arg-type]


def test_built_backbone_saves_random_weights_with_the_run_by_default() -> None:
    model = torch.nn.Identity()
    assert tlkit.BuiltBackbone(model=model, weights_id="random").saved_with_run is True
    assert tlkit.BuiltBackbone(model=model, weights_id="ab" * 32).saved_with_run is False
    assert tlkit.BuiltBackbone(model=model, weights_id="ab" * 32, saved_with_run=True).saved_with_run is True


def test_the_recipe_hands_the_parsed_request_to_the_plugin(plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.recipe.loader import resolve

    monkeypatch.chdir(tmp_path)
    recipe = resolve({"dataset": {"root": "d"}, "backbone": {"name": "resnet18", "weights": "w.pth"}}, plugins)
    assert recipe.weights == WeightsRequest("file", tmp_path / "w.pth")
    assert recipe.to_dict()["backbone"]["weights"] == str(tmp_path / "w.pth")
    with pytest.raises(RecipeError, match="'backbone.weights'"):
        resolve({"dataset": {"root": "d"}, "backbone": {"weights": 7}}, plugins)
