"""The listing's ``input`` column: derived from each backbone's preprocessing, a function included (Lite0's)."""

from __future__ import annotations

import types
from typing import Any

import pytest

import tlkit
from tlkit.cli import console, listings
from tlkit.contract.plugin_manager import load_plugins

PRE = tlkit.Preprocessing(crop_size=96, resize_size=110, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _broken() -> tlkit.Preprocessing:
    raise KeyError("input_size")


def _plugin() -> types.ModuleType:
    module = types.ModuleType("tlkit_inputs")

    def register_backbones(register: Any) -> None:
        build: Any = print
        register(tlkit.BackboneSpec(name="as_record", build=build, preprocessing=PRE))
        register(tlkit.BackboneSpec(name="as_function", build=build, preprocessing=lambda: PRE))
        register(tlkit.BackboneSpec(name="broken_function", build=build, preprocessing=_broken, card=lambda: {"input_size": 160}))
        register(tlkit.BackboneSpec(name="broken_no_card", build=build, preprocessing=_broken))

    module.register_backbones = tlkit.hookimpl(register_backbones)  # type: ignore[attr-defined]
    return module


def test_the_input_column_is_derived_for_function_preprocessing(capsys: pytest.CaptureFixture[str]) -> None:
    plugins = load_plugins(entry_points=False, extra=[_plugin()])
    rows = {r["name"]: r for r in listings.backbones(plugins, "*")}
    assert rows["efficientnet_lite0"]["input"] == "224 bicubic"  # a function in the built-in plugin
    assert rows["resnet18"]["input"] == "224 bilinear"
    assert (rows["as_record"]["input"], rows["as_function"]["input"]) == ("96 bilinear", "96 bilinear")
    assert (rows["broken_function"]["input"], rows["broken_no_card"]["input"]) == ("160", None)  # the card, else unknown
    console.print_backbones([rows["efficientnet_lite0"]])
    assert "224 bicubic" in capsys.readouterr().out
