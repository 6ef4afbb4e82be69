"""The example third-party package, installed for real: listed, its own tests pass, a recipe runs on it."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import CLASS_COLOURS, make_image
from plugin_packages import EXAMPLE, pip_install, run_tlkit, subprocess_env
from typer.testing import CliRunner

from tlkit.cli.app import app
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins

DIST = "tlkit-example-plugin"


@pytest.fixture(scope="module")
def example_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package built and installed into a throwaway folder (once for this module)."""
    return pip_install([EXAMPLE], tmp_path_factory.mktemp("site"))


@pytest.fixture
def installed(example_target: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugins]:
    """Plugins loaded from entry points with the installed example visible, as the process-wide plugins."""
    monkeypatch.syspath_prepend(str(example_target))
    monkeypatch.delenv("TLKIT_LOAD_PLUGINS", raising=False)
    loaded = load_plugins()
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(None)


def test_installed_example_is_listed_everywhere(installed: Plugins) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [DIST]  # built-ins hidden without --all
    assert rows[0] == {
        "name": DIST,
        "version": "0.1.0",
        "builtin": False,
        "hooks": ["register_backbones", "register_datasets", "register_heads"],
        "registered": {"backbones": ["lite0_stage3", "lite0_stage4", "lite0_stage5"], "datasets": ["labelled_csv"], "heads": ["ridge"]},
        "status": "ok",
        "error": None,
    }
    table = runner.invoke(app, ["plugins"]).output
    assert DIST in table and "0.1.0" in table and "lite0_stage4" in table and "tlkit:linear" not in table
    assert "tlkit:linear" in runner.invoke(app, ["plugins", "--all"]).output

    backbones = json.loads(runner.invoke(app, ["backbones", "lite0_*", "--json"]).output)
    assert [(b["name"], b["feature_dim"], b["plugin"]) for b in backbones] == [
        ("lite0_stage3", 80, DIST),
        ("lite0_stage4", 112, DIST),
        ("lite0_stage5", 192, DIST),
    ]
    datasets = runner.invoke(app, ["datasets"]).output
    assert "labelled_csv" in datasets and "delimiter: str = ','" in datasets and "train: str (required)" in datasets
    heads = json.loads(runner.invoke(app, ["heads", "ridge", "--json"]).output)
    assert heads[0]["description"].startswith("ridge-regression classifier")
    assert [(o["name"], o["type"], o["default"]) for o in heads[0]["options"]] == [("alpha", "float", 1.0), ("standardize", "bool", True)]


def _csv_data(root: Path) -> tuple[Path, Path]:
    """Two colour classes as images listed in train.csv / test.csv, paths relative to the CSVs."""
    rows: dict[str, list[str]] = {"train": ["path,label"], "test": []}
    for split, count in (("train", 6), ("test", 3)):
        for label, colour in zip(("bees", "ants"), CLASS_COLOURS):
            for i in range(count):
                make_image(root / "img" / f"{split}_{label}_{i}.jpg", colour, size=(64, 48), seed=zlib.crc32(f"{split}/{label}/{i}".encode()))
                rows[split].append(f"img/{split}_{label}_{i}.jpg,{label}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root / "train.csv", root / "test.csv"


@pytest.mark.slow
def test_recipe_using_all_three_example_entries_runs_through_the_tlkit_command(example_target: Path, tmp_path: Path) -> None:
    train_csv, test_csv = _csv_data(tmp_path / "data")
    recipe = {
        "name": "example",
        "dataset": {"name": "labelled_csv", "train": str(train_csv), "test": str(test_csv)},
        "backbone": {"name": "lite0_stage3"},  # the packaged ImageNet weights, offline
        "extract": {"batch_size": 8, "workers": 0},
        "head": {"name": "ridge", "alpha": 10.0},
    }
    (tmp_path / "example.yaml").write_text(yaml.safe_dump(recipe))
    result = run_tlkit(["run", "example.yaml", "--out", "out"], example_target, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    model = json.loads((tmp_path / "out" / "model.json").read_text())
    assert (model["backbone"]["name"], model["head"]["name"], model["features"]["dim"]) == ("lite0_stage3", "ridge", 80)
    assert metrics["counts"] == {"train": 12, "test": 6}
    assert metrics["test_accuracy"] >= 5 / 6


@pytest.mark.slow
def test_example_package_own_tests_pass_against_the_installed_package(example_target: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=EXAMPLE / "tests",  # not the package root, so `import tlkit_example_plugin` finds the installed copy
        env=subprocess_env(example_target, PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
