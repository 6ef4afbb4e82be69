"""The plugin manager in-process: built-ins through the same path, failures isolated, duplicates refused."""

from __future__ import annotations

import warnings

import pytest
from tiny import TinyPlugin

import tlkit
from tlkit.contract.plugin_manager import DEFAULT_PLUGINS, PluginWarning, load_plugins
from tlkit.errors import RegistryError


def test_builtins_register_through_hooks():
    plugins = load_plugins(entry_points=False)
    names = {s.name for s in plugins.status.values()}
    assert names == {"tlkit:" + m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS}
    assert all(s.builtin and not s.error for s in plugins.status.values())
    assert plugins.pm.get_plugin("tlkit:linear") is not None


def test_extra_plugin_entries_are_usable():
    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    spec = plugins.backbones.get("tiny_cnn")
    assert spec.plugin == "tests-tiny" and spec.feature_dim == 8
    assert plugins.status["tests-tiny"].registered == {"backbones": ["tiny_cnn"]}


class Raising:
    __name__ = "raising-plugin"

    @tlkit.hookimpl
    def register_heads(self, register):
        raise RuntimeError("boom")


class Malformed:
    __name__ = "malformed-plugin"

    @tlkit.hookimpl
    def register_backbones(self, register):
        register("not a spec")


class Duplicate:
    __name__ = "duplicate-plugin"

    @tlkit.hookimpl
    def register_heads(self, register):
        register(tlkit.HeadSpec(name="linear", fit=lambda *a: None, load=lambda *a: None))  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("plugin", [Raising(), Malformed()])
def test_a_broken_plugin_is_one_warning_and_skipped(plugin):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plugins = load_plugins(entry_points=False, extra=[plugin])
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1 and plugin.__name__ in messages[0]
    assert plugins.status[plugin.__name__].error
    assert "linear" in plugins.heads and "resnet18" in plugins.backbones


def test_duplicate_names_are_an_error_naming_both():
    with pytest.raises(RegistryError) as info:
        load_plugins(entry_points=False, extra=[Duplicate()])
    assert "duplicate-plugin" in str(info.value) and "tlkit:linear" in str(info.value)


def test_load_plugins_env_var_empty_loads_no_entry_points(monkeypatch):
    monkeypatch.setenv("TLKIT_LOAD_PLUGINS", "")
    plugins = load_plugins()
    assert all(s.builtin for s in plugins.status.values())
