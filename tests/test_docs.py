"""The README's "Writing a plugin" section is complete and true.

Every hook in ``tlkit/contract/hookspecs.py`` has a ``### <hook>`` heading with an example and a test (as
datasette's ``test_docs.py`` checks). And the section's own code blocks, pasted into a package
exactly as the README lays it out, make a plugin that installs, lists and runs: someone with only
the README can write a working plugin.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import CLASS_COLOURS, make_image
from plugin_packages import REPO, pip_install
from typer.testing import CliRunner

from tlkit.cli import app as cli
from tlkit.contract import hookspecs
from tlkit.contract.plugin_manager import PluginWarning, load_plugins, set_plugins

README = REPO / "README.md"
HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "tlkit_spec"))


def plugin_section() -> str:
    text = README.read_text()
    start = text.index("\n## Writing a plugin\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def subsections() -> dict[str, str]:
    """``### heading`` -> its text, within the plugin section."""
    parts = re.split(r"^### (.+)$", plugin_section(), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def test_hookspecs_are_found() -> None:
    assert HOOKS == ["register_backbones", "register_datasets", "register_heads"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_a_complete_example(hook: str) -> None:
    sections = subsections()
    assert hook in sections, f"README 'Writing a plugin' has no '### {hook}' heading"
    blocks = code_blocks(sections[hook], "python")
    assert blocks, f"README '### {hook}' has no python example"
    assert "@tlkit.hookimpl" in blocks[0] and f"def {hook}(register)" in blocks[0], f"the '### {hook}' example does not implement {hook}"


def test_every_hook_heading_names_a_real_hook() -> None:
    stale = [h for h in subsections() if h.startswith("register_") and h not in HOOKS]
    assert not stale, f"README documents hooks that tlkit/contract/hookspecs.py lacks: {stale}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    tests = (REPO / "tests" / "test_plugins.py").read_text()
    assert re.search(rf"\b{hook}\b", tests), f"tests/test_plugins.py never exercises {hook}"


def _write_readme_package(root: Path) -> Path:
    """``tlkit-myplugin/`` exactly as the README lays it out, from the README's own code blocks."""
    sections = subsections()
    (toml,) = code_blocks(plugin_section().split("\n### ", 1)[0], "toml")
    package = root / "tlkit-myplugin"
    (package / "tlkit_myplugin").mkdir(parents=True)
    (package / "pyproject.toml").write_text(toml)
    module = "\n\n".join(code_blocks(sections[hook], "python")[0] for hook in HOOKS)
    (package / "tlkit_myplugin" / "__init__.py").write_text(module)
    return package


def _csv_data(root: Path) -> tuple[Path, Path]:
    for split, count in (("train", 5), ("test", 3)):
        lines = []
        for label, colour in zip(("red", "green"), CLASS_COLOURS):
            for i in range(count):
                make_image(root / "images" / f"{split}-{label}-{i}.png", colour, size=(80, 64), seed=hash((split, label, i)) % 991)
                lines.append(f"images/{split}-{label}-{i}.png,{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv", root / "test.csv"


@pytest.mark.slow
def test_the_readme_alone_makes_a_plugin_that_installs_lists_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = pip_install([_write_readme_package(tmp_path / "src")], tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TLKIT_LOAD_PLUGINS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_plugins()
    assert [str(w.message) for w in caught if issubclass(w.category, PluginWarning)] == []
    status = loaded.status["tlkit-myplugin"]
    assert (status.version, status.hooks) == ("0.1.0", HOOKS)
    assert status.registered == {"backbones": ["tiny_cnn"], "datasets": ["csv_pairs"], "heads": ["my_centroid"]}

    set_plugins(loaded)
    try:
        runner = CliRunner()
        assert "tlkit-myplugin" in runner.invoke(cli.app, ["plugins"]).output
        assert json.loads(runner.invoke(cli.app, ["backbones", "tiny_cnn", "--json"]).output)[0]["feature_dim"] == 16
        assert "train_csv: str (required)" in runner.invoke(cli.app, ["datasets", "csv_pairs"]).output
        heads = runner.invoke(cli.app, ["heads", "my_centroid"]).output
        assert "temperature: float = 10.0" in heads and "Nearest class mean by cosine similarity." in heads

        # the README's "Testing a plugin" example passes on the README's plugin
        namespace: dict = {}
        exec(compile(code_blocks(subsections()["Testing a plugin: `tlkit.testing`"], "python")[0], "README", "exec"), namespace)
        (tmp_path / "contract").mkdir()
        namespace["test_myplugin_keeps_the_contract"](tmp_path / "contract")

        train_csv, test_csv = _csv_data(tmp_path / "data")
        recipe = {
            "name": "readme-plugin",
            "dataset": {"name": "csv_pairs", "train_csv": str(train_csv), "test_csv": str(test_csv)},
            "backbone": {"name": "tiny_cnn"},
            "extract": {"workers": 0},
            "head": {"name": "my_centroid", "temperature": 5.0},
        }
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        result = runner.invoke(cli.app, ["run", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
        assert result.exit_code == 0, result.output
    finally:
        set_plugins(None)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["counts"] == {"train": 10, "test": 6} and metrics["feature_dim"] == 16
    assert metrics["test_accuracy"] >= 5 / 6
