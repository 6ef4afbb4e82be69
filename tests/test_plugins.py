"""Loading plugins: what a good plugin shows, and how a broken one is skipped, named once, and harmless.

Throwaway plugins are registered in-process with ``load_plugins(extra=[...])``; broken packages
are also built and installed for real (entry points) to check the path users take.
"""

from __future__ import annotations

import dataclasses
import json
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import make_image_folder
from plugin_packages import pip_install, run_tlkit, write_package
from typer.testing import CliRunner

import tlkit
from tlkit.cli import app as cli
from tlkit.contract.plugin_manager import DEFAULT_PLUGINS, Plugins, PluginWarning, load_plugins, set_plugins
from tlkit.errors import RegistryError

PRE = tlkit.Preprocessing(crop_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _module(name: str, **hooks: Callable[..., None]) -> types.ModuleType:
    """A plugin module named ``name`` whose functions are marked ``@tlkit.hookimpl``."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, tlkit.hookimpl(function, specname=hook_name))
    return module


def _backbone(name: str = "toy", **fields: Any) -> tlkit.BackboneSpec:
    def build(weights: Any, options: Any) -> tlkit.BuiltBackbone:
        return tlkit.BuiltBackbone(model=torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), weights_id="random")

    return tlkit.BackboneSpec(**{"name": name, "build": build, "preprocessing": PRE, "feature_dim": 3, **fields})


def _load(*extra: object, builtins: bool = False) -> tuple[Plugins, list[str]]:
    """Plugins from ``extra`` (and the built-ins if asked: they take a second to list), with the plugin warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_plugins(entry_points=False, extra=extra, builtins=builtins)
    return loaded, [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_builtins_are_registered_through_the_same_hooks() -> None:
    loaded, messages = _load(builtins=True)
    assert messages == []
    builtin = [s for s in loaded.status.values() if s.builtin]
    assert len(builtin) == len(DEFAULT_PLUGINS) and all(not s.failed for s in builtin)
    assert loaded.status["tlkit:linear"].hooks == ["register_heads"]
    assert loaded.status["tlkit:imagefolder"].registered == {"datasets": ["imagefolder"]}
    assert {"resnet18", "efficientnet_lite0"} <= set(loaded.backbones.names())


def test_a_good_plugin_registers_every_hook_and_is_named_after_its_module() -> None:
    plugin = _module(
        "tlkit_toy",
        register_backbones=lambda register: register(_backbone()),
        register_datasets=lambda register: register(tlkit.DatasetSpec(name="toy_data", load=lambda o: None)),
        register_heads=lambda register: register(tlkit.HeadSpec(name="toy_head", fit=lambda *a: None, load=lambda *a: None)),
        register_observers=lambda register: register(tlkit.ObserverSpec(name="toy_tracker", build=lambda options: tlkit.Observer())),
    )
    loaded, messages = _load(plugin)
    assert messages == []
    status = loaded.status["tlkit_toy"]
    assert status.hooks == ["register_backbones", "register_datasets", "register_heads", "register_observers"]
    assert status.registered == {"backbones": ["toy"], "datasets": ["toy_data"], "heads": ["toy_head"], "observers": ["toy_tracker"]}
    assert loaded.backbones.get("toy").plugin == loaded.heads.get("toy_head").plugin == loaded.observers.get("toy_tracker").plugin == "tlkit_toy"


def _raise(register: Any) -> None:
    raise RuntimeError("boom")


def test_a_hook_that_raises_skips_the_whole_plugin_with_one_warning() -> None:
    plugin = _module("tlkit_half", register_backbones=lambda register: register(_backbone("half_bb")), register_heads=_raise)
    loaded, messages = _load(plugin, builtins=True)
    assert messages == ["plugin 'tlkit_half' is skipped: register_heads raised RuntimeError: boom"]
    assert "half_bb" not in loaded.backbones  # all of a plugin or none of it
    status = loaded.status["tlkit_half"]
    assert status.failed and status.registered == {} and "RuntimeError: boom" in (status.error or "")
    assert "linear" in loaded.heads and "resnet18" in loaded.backbones  # everything else still works


@pytest.mark.parametrize(
    ("hook", "entry", "reason"),
    [
        ("register_backbones", _backbone(feature_dim=-3), "'feature_dim' must be a positive int or None, not -3"),
        ("register_backbones", _backbone(feature_dim="512"), "'feature_dim' must be a positive int"),
        ("register_backbones", _backbone(preprocessing="imagenet"), "'preprocessing' must be a tlkit.Preprocessing"),
        ("register_backbones", _backbone(build="not a function"), "'build' is not callable"),
        ("register_backbones", _backbone(name=" spaced "), "'name' must be a non-empty string"),
        ("register_datasets", tlkit.DatasetSpec(name="d", load=print, options=tlkit.NoOptions()), "'options' must be a dataclass type"),
        ("register_datasets", {"name": "d", "load": print}, "passed a dict to register in register_datasets; expected tlkit.DatasetSpec"),
        ("register_heads", _backbone("wrong_kind"), "passed a BackboneSpec to register in register_heads; expected tlkit.HeadSpec"),
        ("register_heads", tlkit.HeadSpec(name="h", fit=print, load=print, description=None), "'description' must be a string"),
        ("register_heads", tlkit.HeadSpec(name="h", fit=print, load=print, from_classifier="linear"), "'from_classifier' must be a function"),
        ("register_observers", tlkit.ObserverSpec(name="o", build="mlflow"), "'build' is not callable"),
        ("register_observers", tlkit.HeadSpec(name="h", fit=print, load=print), "passed a HeadSpec to register in register_observers; expected tlkit.ObserverSpec"),
    ],
)
def test_a_malformed_entry_skips_the_plugin_and_says_why(hook: str, entry: Any, reason: str) -> None:
    loaded, messages = _load(_module("tlkit_malformed", **{hook: lambda register: register(entry)}))
    assert len(messages) == 1 and messages[0].startswith("plugin 'tlkit_malformed' is skipped: ") and reason in messages[0]
    assert loaded.status["tlkit_malformed"].failed and not loaded.status["tlkit_malformed"].registered


def test_an_entry_registered_twice_by_one_plugin_is_malformed() -> None:
    def twice(register: Any) -> None:
        register(_backbone("dup"))
        register(_backbone("dup"))

    _loaded, messages = _load(_module("tlkit_twice", register_backbones=twice))
    assert messages == ["plugin 'tlkit_twice' is skipped: registered a malformed backbone 'dup' (registered twice by register_backbones)"]


def test_a_misspelt_hook_is_reported_with_the_right_name() -> None:
    _loaded, messages = _load(_module("tlkit_typo", register_backbone=lambda register: register(_backbone())))
    assert messages == ["plugin 'tlkit_typo' is skipped: implements unknown hook 'register_backbone'; did you mean 'register_backbones'?"]


def test_a_hook_with_wrong_arguments_cannot_be_registered() -> None:
    _loaded, messages = _load(_module("tlkit_args", register_datasets=lambda callback: None))
    assert len(messages) == 1 and "could not be registered" in messages[0] and "callback" in messages[0]


def test_a_name_two_plugins_register_is_an_error_naming_both() -> None:
    clash = _module("tlkit_clash", register_heads=lambda register: register(tlkit.HeadSpec(name="linear", fit=print, load=print)))
    with pytest.raises(RegistryError, match="head 'linear' is registered by both plugin 'tlkit_clash' and plugin 'tlkit:linear'"):
        load_plugins(entry_points=False, extra=[clash])


def test_trace_logs_every_hook_call(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TLKIT_TRACE_PLUGINS", "1")
    load_plugins(entry_points=False)
    err = capsys.readouterr().err
    assert "[tlkit trace] tlkit:linear.register_heads()" in err and "[tlkit trace] tlkit:imagefolder.register_datasets() registered 1" in err


@dataclasses.dataclass(frozen=True)
class _ToyHeadOptions:
    shrink: float = dataclasses.field(default=0.5, metadata={"help": "how much to shrink"})
    classes: int | None = None


def _fit_toy(train: Any, options: Any, ctx: Any) -> Any:
    """Shrunk class means, cosine logits.

    More text that the listing must not show."""


def test_listings_show_description_and_options_from_the_plugins_own_declaration() -> None:
    plugin = _module(
        "tlkit_listed",
        register_heads=lambda register: register(tlkit.HeadSpec(name="toy_head", fit=_fit_toy, load=print, options=_ToyHeadOptions)),
        register_datasets=_raise,
    )
    loaded, _ = _load(plugin)
    loaded2, _ = _load(_module("tlkit_listed_ok", register_heads=plugin.register_heads), builtins=True)
    set_plugins(loaded2)
    try:
        runner = CliRunner()
        rows = json.loads(runner.invoke(cli.app, ["heads", "toy_head", "--json"]).output)
        assert rows == [
            {
                "name": "toy_head",
                "plugin": "tlkit_listed_ok",
                "description": "Shrunk class means, cosine logits.",
                "options": [
                    {"name": "shrink", "type": "float", "default": 0.5, "help": "how much to shrink"},
                    {"name": "classes", "type": "int | null", "default": None, "help": ""},
                ],
            }
        ]
        table = runner.invoke(cli.app, ["heads"]).output
        assert "shrink: float = 0.5  how much to shrink" in table and "lr: float = 0.001" in table
    finally:
        set_plugins(None)
    set_plugins(loaded)
    try:
        result = CliRunner().invoke(cli.app, ["plugins"])
        assert "tlkit_listed" in result.output and "failed: register_datasets raised RuntimeError: boom" in result.output
        assert "toy_head" not in CliRunner().invoke(cli.app, ["heads"]).output
    finally:
        set_plugins(None)


# --- real packages installed through entry points ---------------------------------------------------

BROKEN = {
    "tlkit-broken-import": 'raise RuntimeError("this plugin cannot be imported")\n',
    "tlkit-broken-hook": """\
        import tlkit

        @tlkit.hookimpl
        def register_heads(register):
            raise ValueError("no heads today")
        """,
    "tlkit-broken-entry": """\
        import tlkit

        @tlkit.hookimpl
        def register_backbones(register):
            register(tlkit.BackboneSpec(name="broken_bb", build=print, preprocessing=print, feature_dim=0))
        """,
}
REASONS = {
    "tlkit-broken-import": "importing tlkit_broken_import raised RuntimeError: this plugin cannot be imported",
    "tlkit-broken-hook": "register_heads raised ValueError: no heads today",
    "tlkit-broken-entry": "registered a malformed backbone 'broken_bb' ('feature_dim' must be a positive int or None, not 0)",
}


@pytest.fixture(scope="module")
def broken_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("broken-src")
    return pip_install([write_package(src, dist, source) for dist, source in BROKEN.items()], tmp_path_factory.mktemp("broken-site"))


@pytest.fixture
def broken_installed(broken_target: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(broken_target))
    monkeypatch.delenv("TLKIT_LOAD_PLUGINS", raising=False)
    set_plugins(None)
    try:
        yield broken_target
    finally:
        set_plugins(None)


def test_installed_broken_plugins_are_each_reported_once_by_distribution_name(broken_installed: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_plugins()
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, PluginWarning))
    assert messages == sorted(f"plugin '{dist}' is skipped: {reason}" for dist, reason in REASONS.items())
    for dist, reason in REASONS.items():
        assert loaded.status[dist].error == reason and loaded.status[dist].version == "0.0.1"
    assert "broken_bb" not in loaded.backbones and "linear" in loaded.heads and "resnet18" in loaded.backbones
    set_plugins(loaded)
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(cli.app, ["plugins", "--json"]).output)}
    assert {name: (r["status"], r["error"]) for name, r in rows.items()} == {d: ("failed", r) for d, r in REASONS.items()}
    assert rows["tlkit-broken-hook"]["hooks"] == ["register_heads"]


def test_load_plugins_env_limits_which_distributions_load(broken_installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLKIT_LOAD_PLUGINS", "")
    loaded, messages = _load_with_entry_points()
    assert messages == [] and all(s.builtin for s in loaded.status.values())
    monkeypatch.setenv("TLKIT_LOAD_PLUGINS", "tlkit_broken_hook")  # names are normalised like pip's
    loaded, messages = _load_with_entry_points()
    assert [s.name for s in loaded.status.values() if not s.builtin] == ["tlkit-broken-hook"] and len(messages) == 1
    monkeypatch.setenv("TLKIT_LOAD_PLUGINS", "tlkit-brokn-hook")
    _, messages = _load_with_entry_points()
    assert messages == ["TLKIT_LOAD_PLUGINS names 'tlkit-brokn-hook', which is not an installed tlkit plugin; did you mean 'tlkit-broken-hook'?"]


def _load_with_entry_points() -> tuple[Plugins, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_plugins()
    return loaded, [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_tlkit_backbones_works_beside_broken_plugins_with_one_warning_each(broken_installed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # cli.main installs its own printer
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        cli.main(["backbones"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and "resnet18" in out and "efficientnet_lite0" in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert sorted(lines) == sorted(f"warning: plugin '{d}' is skipped: {r}" for d, r in REASONS.items())


@pytest.mark.slow
def test_tlkit_run_works_beside_a_plugin_that_raises_on_import(broken_target: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", n_train=4, n_test=2)
    recipe = {
        "dataset": {"name": "imagefolder", "root": str(data)},
        "backbone": {"name": "resnet18", "weights": "none"},
        "extract": {"workers": 0},
        "head": {"name": "linear", "epochs": 20, "eval_every": 10},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = run_tlkit(["run", "r.yaml", "--out", "out"], broken_target, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["counts"] == {"train": 8, "test": 4}
    for dist, reason in REASONS.items():
        assert result.stderr.count(dist) == 1 and f"plugin '{dist}' is skipped: {reason}" in result.stderr
