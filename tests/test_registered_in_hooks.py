"""``tlkit.backbones.registered`` inside a ``register_backbones`` hook: one load, one hook call, no warning.

It used to ask for the process-wide plugins, which were what was being loaded: each call started
another load, about 600 deep, until a RecursionError skipped the plugin with a false warning.
"""

from __future__ import annotations

import dataclasses
import types
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import tlkit
import tlkit.testing
from tlkit.backbones import derived_spec, registered
from tlkit.contract import plugin_manager
from tlkit.contract.plugin_manager import get_plugins, load_plugins, set_plugins
from tlkit.contract.weights_request import WeightsRequest
from tlkit.errors import RegistryError


def _looking_up_plugin(calls: list[str], base: str = "efficientnet_lite0") -> types.ModuleType:
    """A plugin whose hook reads a registered backbone's feature dimension and preprocessing, as the docs suggest."""
    module = types.ModuleType("tlkit_looks_up")

    def register_backbones(register: Any) -> None:
        calls.append("hook")
        spec = registered(base)
        register(dataclasses.replace(spec, name="lite0_again", plugin="", description=f"{spec.feature_dim}-d, as {base}"))

    module.register_backbones = tlkit.hookimpl(register_backbones)  # type: ignore[attr-defined]
    return module


@pytest.fixture
def process_wide() -> Iterator[None]:
    set_plugins(None)
    try:
        yield
    finally:
        set_plugins(None)


def test_registered_in_a_hook_loads_the_plugins_once_and_warns_nothing(process_wide: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    module = _looking_up_plugin(calls)
    original = plugin_manager.load_plugins

    def counting_load(**kwargs: Any) -> plugin_manager.Plugins:
        calls.append("load")
        return original(entry_points=False, extra=[module])

    monkeypatch.setattr(plugin_manager, "load_plugins", counting_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old recursion ended in a "plugin ... is skipped" warning
        plugins = get_plugins()
    assert calls == ["load", "hook"]
    spec = plugins.backbones.get("lite0_again")
    assert spec.plugin == "tlkit_looks_up" and spec.description == "1280-d, as efficientnet_lite0"
    assert plugins.status["tlkit_looks_up"].state == "ok"
    assert get_plugins() is plugins and calls == ["load", "hook"]


def test_registered_in_a_hook_names_what_it_cannot_see_yet() -> None:
    calls: list[str] = []
    with pytest.warns(plugin_manager.PluginWarning) as caught:
        plugins = load_plugins(entry_points=False, extra=[_looking_up_plugin(calls, base="efficientnet_lit0")])
    assert calls == ["hook"]
    message = str(caught[0].message)
    assert "unknown backbone 'efficientnet_lit0'; did you mean 'efficientnet_lite0'?" in message
    assert "(in a hook, registered() sees the built-ins and plugins loaded earlier)" in message
    assert "lite0_again" not in plugins.backbones


def test_the_plugins_asked_for_while_they_load_is_one_error_not_a_second_load(process_wide: None, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("tlkit_asks_early")
    loads: list[int] = []

    def register_backbones(register: Any) -> None:
        get_plugins()

    module.register_backbones = tlkit.hookimpl(register_backbones)  # type: ignore[attr-defined]
    original = plugin_manager.load_plugins
    monkeypatch.setattr(plugin_manager, "load_plugins", lambda **kw: (loads.append(1), original(entry_points=False, extra=[module]))[1])
    with pytest.warns(UserWarning, match="plugin 'tlkit_asks_early' is skipped: register_backbones raised RegistryError: the plugins are still loading"):
        get_plugins()
    assert loads == [1]


@dataclasses.dataclass(frozen=True)
class StemOptions:
    pool: str = "avg"


def _stem(model: torch.nn.Module, options: StemOptions) -> torch.nn.Module:
    pool = torch.nn.AdaptiveAvgPool2d(1) if options.pool == "avg" else torch.nn.AdaptiveMaxPool2d(1)
    return torch.nn.Sequential(model.conv_stem, model.bn1, pool, torch.nn.Flatten())


def test_derived_spec_takes_options_and_finds_its_base_in_the_load_that_made_it() -> None:
    """Made inside a hook of a kit load (not the process-wide plugins), the entry builds from that load's base."""
    module = types.ModuleType("tlkit_derives")

    def register_backbones(register: Any) -> None:
        register(derived_spec("lite0_stem", "efficientnet_lite0", _stem, feature_dim=32, options=StemOptions))

    module.register_backbones = tlkit.hookimpl(register_backbones)  # type: ignore[attr-defined]
    plugins = tlkit.testing.load_plugin(module)
    spec = plugins.backbones.get("lite0_stem")
    assert spec.options is StemOptions
    avg = spec.build(WeightsRequest.random(), StemOptions())
    biggest = spec.build(WeightsRequest.random(), StemOptions(pool="max"))
    assert isinstance(avg.model[2], torch.nn.AdaptiveAvgPool2d) and isinstance(biggest.model[2], torch.nn.AdaptiveMaxPool2d)
    assert tlkit.testing.check_backbone("lite0_stem", {"pool": "max"}, plugins=plugins, images=2).feature_dim == 32
    with pytest.raises(AssertionError, match="unknown key 'backbone.pool_'; did you mean 'pool'"):
        tlkit.testing.check_backbone("lite0_stem", {"pool_": "max"}, plugins=plugins, images=2)


def test_registered_outside_hooks_still_reads_the_process_wide_plugins(process_wide: None) -> None:
    assert registered("efficientnet_lite0").feature_dim == 1280
    with pytest.raises(RegistryError, match="did you mean 'efficientnet_lite0'"):
        registered("efficientnet_lite00")


def test_state_map_is_a_function_over_the_whole_state_dict(tmp_path: Any) -> None:
    """As documented: it sees every tensor at once, so it can rename keys and drop the ones the model lacks."""
    from safetensors.torch import save_file

    from tlkit.backbones import from_weights_file

    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    file = tmp_path / "foreign.safetensors"
    save_file({f"module.{k}": v for k, v in source.state_dict().items()}, str(file))
    seen: list[list[str]] = []

    def keep_first_layer(state: Any) -> dict[str, torch.Tensor]:
        seen.append(sorted(state))
        return {k.removeprefix("module.0."): v for k, v in state.items() if k.startswith("module.0.")}

    target = torch.nn.Linear(4, 3)
    built = from_weights_file(target, file, what="first layer", state_map=keep_first_layer)
    assert seen == [["module.0.bias", "module.0.weight", "module.1.bias", "module.1.weight"]]
    assert torch.equal(target.weight, source[0].weight) and built.weights_id
