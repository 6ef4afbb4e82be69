"""The plugin API version: a plugin that does not fit it is reported in one line when plugins load,
and a recipe naming one of its entries stops with one line (exit 2) before any image is read.

Throwaway plugins are registered in-process (``load_plugins(extra=[...])``), as in test_plugins.py.
"""

from __future__ import annotations

import json
import re
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from conftest import write_recipe
from tiny import TinyCNN
from typer.testing import CliRunner

import tlkit
from tlkit.cli import app as cli
from tlkit.cli import listing_index, listings
from tlkit.contract import plugin_manager
from tlkit.contract.plugin_manager import Plugins, PluginWarning, load_plugins, set_plugins
from tlkit.errors import RegistryError
from tlkit.testing import check_backbone, load_plugin

PRE = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
CALLED: list[str] = []  # what the old builders were asked to do: must stay empty


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def old_build(weights: str, options: Any) -> tlkit.BuiltBackbone:
    """The plugin API 1 contract: the weights as the recipe's string."""
    CALLED.append(weights)
    return tlkit.BuiltBackbone(model=_net(), weights_id="random")


def old_build_optional(weights: Optional[str], options: Any) -> tlkit.BuiltBackbone:
    CALLED.append(str(weights))
    return tlkit.BuiltBackbone(model=_net(), weights_id="random")


def old_build_unresolvable(weights: str, options: OnlyForTypeCheckers) -> tlkit.BuiltBackbone:  # noqa: F821
    CALLED.append(weights)
    return tlkit.BuiltBackbone(model=_net(), weights_id="random")


def new_build(request: tlkit.WeightsRequest, options: Any) -> tlkit.BuiltBackbone:
    return tlkit.BuiltBackbone(model=_net(), weights_id="random")


def _plugin(name: str, version: str = "1.0", declares: object = None, **hooks: Callable[..., None]) -> types.ModuleType:
    """A plugin module called ``name`` at ``version`` whose functions are ``@tlkit.hookimpl``s."""
    module = types.ModuleType(name)
    module.__version__ = version  # type: ignore[attr-defined]
    if declares is not None:
        module.tlkit_plugin_api = declares  # type: ignore[attr-defined]
    for hook_name, function in hooks.items():
        setattr(module, hook_name, tlkit.hookimpl(function, specname=hook_name))
    return module


def _backbones(*specs: tlkit.BackboneSpec) -> Callable[[Any], None]:
    def register_backbones(register: Any) -> None:
        for spec in specs:
            register(spec)

    return register_backbones


def old_plugin() -> types.ModuleType:
    return _plugin("old-plugin", register_backbones=_backbones(tlkit.BackboneSpec(name="old-net", build=old_build, preprocessing=PRE, feature_dim=3)))


def _load(*extra: object, builtins: bool = False) -> tuple[Plugins, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_plugins(entry_points=False, extra=extra, builtins=builtins)
    return loaded, [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


@pytest.fixture
def with_old_plugin() -> Iterator[Plugins]:
    """The built-ins, the old plugin and a compatible one, as the process-wide plugins."""
    good = _plugin("new-plugin", declares=2, register_backbones=_backbones(tlkit.BackboneSpec(name="new-net", build=new_build, preprocessing=PRE, feature_dim=3)))
    loaded, _ = _load(old_plugin(), good, builtins=True)
    set_plugins(loaded)
    CALLED.clear()
    try:
        yield loaded
    finally:
        set_plugins(None)


def test_the_version_is_public_and_an_int() -> None:
    assert "PLUGIN_API_VERSION" in tlkit.__all__ and tlkit.PLUGIN_API_VERSION == 2 and tlkit.__version__ == "0.2.0"


@pytest.mark.parametrize(("build", "shown"), [(old_build, "weights: str, options: Any"), (old_build_optional, "weights: Optional[str], options: Any"),
                                              (old_build_unresolvable, "weights: str, options: OnlyForTypeCheckers")])
def test_a_build_taking_the_weights_string_is_incompatible_in_one_line(build: Callable[..., Any], shown: str) -> None:
    spec = tlkit.BackboneSpec(name="old-net", build=build, preprocessing=PRE, feature_dim=3)
    loaded, messages = _load(_plugin("old-plugin", register_backbones=_backbones(spec)))
    status = loaded.status["old-plugin"]
    assert status.state == "incompatible" and status.failed and status.registered == {}
    assert status.error == (
        f"BackboneSpec 'old-net'.build takes ({shown}): since plugin API 2 (tlkit 0.2.0) it receives a tlkit.WeightsRequest; update the plugin (see CHANGELOG.md)"
    )
    assert messages == [f"plugin 'old-plugin' is incompatible with tlkit 0.2.0: {status.error}"]
    assert "old-net" not in loaded.backbones and loaded.backbones.names("*") == []
    with pytest.raises(RegistryError) as info:
        loaded.backbones.get("old-net")
    assert str(info.value) == (
        f"backbone 'old-net' (plugin old-plugin 1.0) is incompatible with tlkit 0.2.0: build takes ({shown}): "
        "since plugin API 2 (tlkit 0.2.0) it receives a tlkit.WeightsRequest; update the plugin (see CHANGELOG.md)"
    )


def test_a_compatible_plugin_is_ok_and_a_weights_request_parameter_may_be_called_weights() -> None:
    def named_weights(weights: tlkit.WeightsRequest, options: Any) -> tlkit.BuiltBackbone:
        return new_build(weights, options)

    specs = [tlkit.BackboneSpec(name=n, build=b, preprocessing=PRE, feature_dim=3) for n, b in (("a", new_build), ("b", named_weights), ("c", lambda *a: None))]
    loaded, messages = _load(_plugin("new-plugin", declares=2, register_backbones=_backbones(*specs)))
    assert messages == [] and loaded.status["new-plugin"].state == "ok"
    assert loaded.status["new-plugin"].registered == {"backbones": ["a", "b", "c"]}


@pytest.mark.parametrize(
    ("hook", "entry", "reason"),
    [
        ("register_heads", tlkit.HeadSpec(name="h", fit=lambda train, options: None, load=print),
         "HeadSpec 'h'.fit takes (train, options): tlkit calls fit(train, options, ctx) (plugin API 2)"),
        ("register_heads", tlkit.HeadSpec(name="h", fit=print, build=lambda: None),
         "HeadSpec 'h'.build takes (): tlkit calls build(config) (plugin API 2)"),
        ("register_datasets", tlkit.DatasetSpec(name="d", load=lambda: None), "DatasetSpec 'd'.load takes (): tlkit calls load(options) (plugin API 2)"),
        ("register_backbones", tlkit.BackboneSpec(name="b", build=lambda weights: None, preprocessing=PRE),
         "BackboneSpec 'b'.build takes (weights): tlkit calls build(request, options) (plugin API 2)"),
        ("register_backbones", tlkit.BackboneSpec(name="b", build=new_build, preprocessing=lambda size: PRE),
         "BackboneSpec 'b'.preprocessing takes (size): tlkit calls preprocessing() (plugin API 2)"),
    ],
)
def test_a_callable_that_cannot_take_what_tlkit_passes_is_incompatible(hook: str, entry: Any, reason: str) -> None:
    loaded, messages = _load(_plugin("odd-plugin", **{hook: lambda register: register(entry)}))
    assert loaded.status["odd-plugin"].state == "incompatible"
    assert messages == [f"plugin 'odd-plugin' is incompatible with tlkit 0.2.0: {reason}; update the plugin (see CHANGELOG.md)"]


@pytest.mark.parametrize(
    ("declares", "reason"),
    [
        (1, "it declares plugin API 1, and since then plugin API 2 (tlkit 0.2.0): BackboneSpec.build receives a tlkit.WeightsRequest instead of the weights string; update the plugin (see CHANGELOG.md)"),
        (3, "it declares plugin API 3, newer than tlkit 0.2.0's plugin API 2; upgrade tlkit or use an older release of the plugin"),
        ("2", "'tlkit_plugin_api' must be an int such as 2 (the plugin API of tlkit 0.2.0), not '2'"),
    ],
)
def test_a_declared_plugin_api_this_tlkit_does_not_speak_is_incompatible(declares: object, reason: str) -> None:
    spec = tlkit.BackboneSpec(name="declared-net", build=new_build, preprocessing=PRE, feature_dim=3)
    loaded, messages = _load(_plugin("declared-plugin", declares=declares, register_backbones=_backbones(spec)))
    assert messages == [f"plugin 'declared-plugin' is incompatible with tlkit 0.2.0: {reason}"]
    with pytest.raises(RegistryError, match=r"^backbone 'declared-net' \(plugin declared-plugin 1.0\) is incompatible with tlkit 0.2.0: it declares|must be an int"):
        loaded.backbones.get("declared-net")


def test_a_class_plugin_declares_through_its_module() -> None:
    class Plugin:
        @tlkit.hookimpl
        def register_backbones(self, register: Any) -> None:
            register(tlkit.BackboneSpec(name="cls-net", build=new_build, preprocessing=PRE, feature_dim=3))

    module = types.ModuleType("class_plugin_module")
    module.tlkit_plugin_api = 9  # type: ignore[attr-defined]
    Plugin.__module__ = module.__name__
    import sys

    sys.modules[module.__name__] = module
    try:
        _loaded, messages = _load(Plugin())
    finally:
        del sys.modules[module.__name__]
    assert len(messages) == 1 and "declares plugin API 9" in messages[0]


def test_a_hook_taking_an_argument_the_hook_does_not_hand_is_one_line() -> None:
    loaded, messages = _load(_plugin("args-plugin", register_datasets=lambda callback: None))
    assert messages == [
        "plugin 'args-plugin' is incompatible with tlkit 0.2.0: its hook register_datasets(callback) could not be registered: "
        "tlkit calls register_datasets(register); rename 'callback' (plugin API 2)"
    ]
    assert loaded.status["args-plugin"].state == "incompatible"


def test_a_name_a_compatible_plugin_registers_wins_over_an_incompatible_one() -> None:
    clash = tlkit.BackboneSpec(name="resnet18", build=old_build, preprocessing=PRE, feature_dim=3)
    loaded, messages = _load(_plugin("old-plugin", register_backbones=_backbones(clash)), builtins=True)
    assert len(messages) == 1 and loaded.backbones.get("resnet18").plugin == "tlkit:torchvision_models"


def test_tlkit_plugins_shows_incompatible_in_one_line(with_old_plugin: Plugins) -> None:
    runner = CliRunner()
    rows = {r["name"]: r for r in json.loads(runner.invoke(cli.app, ["plugins", "--json"]).output)}
    assert rows["old-plugin"]["status"] == "incompatible" and rows["new-plugin"]["status"] == "ok"
    assert rows["new-plugin"]["registered"] == {"backbones": ["new-net"]} and rows["old-plugin"]["registered"] == {}
    error = rows["old-plugin"]["error"]
    assert "\n" not in error and error.startswith("BackboneSpec 'old-net'.build takes (weights: str, options: Any)")
    table = runner.invoke(cli.app, ["plugins"]).output
    lines = [line for line in table.splitlines() if "old-plugin" in line]
    assert len(lines) == 2 and "incompatible" in lines[0]  # the table row, then the reason
    assert lines[1] == f"old-plugin incompatible: {error}"
    assert "CHANGELOG.md" not in table.replace(lines[1], "")  # the reason is not folded over several lines


def test_a_run_naming_an_incompatible_backbone_stops_in_one_line_before_reading_data(
    with_old_plugin: Plugins, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "no-such-folder", backbone={"name": "old-net"})
    with pytest.raises(SystemExit) as info:
        cli.main(["run", str(recipe), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        f"error: recipe {recipe}: 'backbone.name': backbone 'old-net' (plugin old-plugin 1.0) is incompatible with tlkit 0.2.0: "
        "build takes (weights: str, options: Any): since plugin API 2 (tlkit 0.2.0) it receives a tlkit.WeightsRequest; update the plugin (see CHANGELOG.md)"
    ]
    assert CALLED == [] and not (tmp_path / "out").exists()  # the data folder is missing: the error came before any data was read


def test_the_real_cli_stops_a_run_naming_an_incompatible_backbone_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins loaded inside ``main`` as the installed command does: the run's error alone (it names the plugin and why), no traceback."""
    real = plugin_manager.load_plugins
    monkeypatch.setattr(plugin_manager, "load_plugins", lambda: real(entry_points=False, extra=[old_plugin()]))
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # cli.main installs its own printer
    set_plugins(None)
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "no-such-folder", backbone={"name": "old-net"})
    try:
        with warnings.catch_warnings(), pytest.raises(SystemExit) as info:
            warnings.simplefilter("always")
            cli.main(["run", str(recipe)])
    finally:
        set_plugins(None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and "Traceback" not in err and "unknown backbone" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: recipe {recipe}: 'backbone.name': backbone 'old-net' (plugin old-plugin 1.0) is incompatible")
    assert "build takes (weights: str" in lines[0] and "it receives a tlkit.WeightsRequest" in lines[0]


def test_a_run_not_naming_the_incompatible_plugin_still_warns_about_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Holding the load warnings back must not lose them: a recipe that fails for another reason still shows the warning."""
    real = plugin_manager.load_plugins
    monkeypatch.setattr(plugin_manager, "load_plugins", lambda: real(entry_points=False, extra=[old_plugin()]))
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    set_plugins(None)
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "no-such-folder", backbone={"name": "resnet18"}, head={"name": "lineer"})
    try:
        with warnings.catch_warnings(), pytest.raises(SystemExit) as info:
            warnings.simplefilter("always")
            cli.main(["run", str(recipe)])
    finally:
        set_plugins(None)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2
    assert lines[0].startswith("warning: plugin 'old-plugin' is incompatible with tlkit 0.2.0: BackboneSpec 'old-net'.build")
    assert lines[-1].startswith("error: ") and "lineer" in lines[-1]


def test_the_listing_index_is_not_saved_while_a_plugin_is_incompatible(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answered from a saved index, a listing would load no plugin and so show no warning: none is saved."""
    real = plugin_manager.load_plugins
    monkeypatch.setattr(plugin_manager, "load_plugins", lambda: real(entry_points=False, extra=[old_plugin()]))
    set_plugins(None)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows, _ = listings.listing("backbones")
        assert "resnet18" in {r["name"] for r in rows} and "old-net" not in {r["name"] for r in rows}
        assert [str(w.message) for w in caught if issubclass(w.category, PluginWarning)][0].startswith("plugin 'old-plugin' is incompatible")
        assert listing_index.load(listing_index.fingerprint()) is None
        with pytest.raises(RegistryError, match=r"^backbone 'old-net' \(plugin old-plugin 1.0\) is incompatible"):
            listings.listing("backbones", "old-net")
    finally:
        set_plugins(None)


def _docs_plugin(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.TinyCNN = TinyCNN  # type: ignore[attr-defined]
    exec(compile(source, f"docs/plugin-api.md ({name})", "exec"), module.__dict__)
    spec = tlkit.BackboneSpec(name=name, build=module.build_tiny, preprocessing=PRE, feature_dim=8)
    module.register_backbones = tlkit.hookimpl(_backbones(spec), specname="register_backbones")  # type: ignore[attr-defined]
    return module


def test_the_migration_snippets_in_the_docs(tmp_path: Path) -> None:
    """docs/plugin-api.md: the plugin API 1 builder is reported as incompatible, the plugin API 2 one builds."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "plugin-api.md").read_text()
    *_, before, after = re.findall(r"^```python\n(.*?)^```", text[text.index("## Migrating from plugin API 1"):], flags=re.M | re.S)
    old_import = "from tlkit.weights import load_into, load_state_dict, sha256_file  # a private module since 0.2.0\n"
    assert old_import in before
    with pytest.raises(AssertionError, match=r"would be skipped as incompatible: BackboneSpec 'tiny_before'.build takes \(weights: str \| None, options\)"):
        load_plugin(_docs_plugin("tiny_before", before.replace(old_import, "")))
    module = _docs_plugin("tiny_after", after)
    assert module.tlkit_plugin_api == tlkit.PLUGIN_API_VERSION
    loaded = load_plugin(module)
    assert check_backbone("tiny_after", plugins=loaded, weights="none", images=2).weights_id == "random"
    weights = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file(TinyCNN().state_dict(), str(weights))
    assert check_backbone("tiny_after", plugins=loaded, weights=str(weights), images=2).feature_dim == 8
