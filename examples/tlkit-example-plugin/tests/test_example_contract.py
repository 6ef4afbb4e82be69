"""The example plugin's own tests: tlkit's contract checks, plus what is specific to each entry."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image

import tlkit.testing
import tlkit_example_plugin
from tlkit.errors import DataError
from tlkit_example_plugin.backbones import STAGE_DIMS
from tlkit_example_plugin.heads import solve_ridge


@pytest.fixture(scope="module")
def plugins() -> tlkit.plugins.Plugins:
    return tlkit.testing.load_plugin(tlkit_example_plugin)


def test_registers_what_it_promises(plugins: tlkit.plugins.Plugins) -> None:
    status = next(s for s in plugins.status.values() if not s.builtin)
    assert status.hooks == ["register_backbones", "register_datasets", "register_heads"]
    assert status.registered == {
        "backbones": [f"lite0_stage{s}" for s in STAGE_DIMS],
        "datasets": ["labelled_csv"],
        "heads": ["ridge"],
    }


@pytest.mark.parametrize("stage", sorted(STAGE_DIMS))
def test_backbone_contract(plugins: tlkit.plugins.Plugins, stage: int) -> None:
    report = tlkit.testing.check_backbone(f"lite0_stage{stage}", plugins=plugins, images=2)
    assert report.feature_dim == STAGE_DIMS[stage]


def test_backbone_uses_the_offline_imagenet_weights(plugins: tlkit.plugins.Plugins) -> None:
    truncated = tlkit.testing.check_backbone("lite0_stage4", plugins=plugins, weights=None, images=2)
    full = plugins.backbones.get("efficientnet_lite0").build(tlkit.WeightsRequest.pretrained(), tlkit.NoOptions())
    assert truncated.weights_id == full.weights_id != "random"


def _image(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path


def _csv_dataset(root: Path) -> dict[str, str]:
    rng = random.Random(0)
    lines = {"train": ["path,label"], "test": []}
    for split, count in (("train", 4), ("test", 2)):
        for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            for i in range(count):
                _image(root / "images" / f"{split}-{label}-{i}.png", tuple(max(0, c - rng.randrange(30)) for c in colour))
                lines[split].append(f"images/{split}-{label}-{i}.png,{label}")
    for split, rows in lines.items():
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return {"train": str(root / "train.csv"), "test": str(root / "test.csv")}


def test_dataset_contract(plugins: tlkit.plugins.Plugins, tmp_path: Path) -> None:
    loaded = tlkit.testing.check_dataset("labelled_csv", _csv_dataset(tmp_path), plugins=plugins)
    assert loaded.classes == ("blue", "red")
    assert [s.path.name for s in loaded.splits["test"]] == ["test-red-0.png", "test-red-1.png", "test-blue-0.png", "test-blue-1.png"]
    assert [s.label for s in loaded.splits["test"]] == [1, 1, 0, 0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda root: (root / "test.csv").write_text("images/test-red-0.png,green\n"), "test.csv has labels that"),
        (lambda root: (root / "test.csv").write_text("images/missing.png,red\n"), "test.csv:1: image"),
        (lambda root: (root / "train.csv").write_text("path,label\nimages/train-red-0.png,red,extra\n"), "train.csv:2: expected two columns"),
        (lambda root: (root / "train.csv").write_text("path,label\n"), "lists no images"),
        (lambda root: (root / "train.csv").unlink(), "train.csv does not exist"),
    ],
)
def test_dataset_errors_name_file_and_line(plugins: tlkit.plugins.Plugins, tmp_path: Path, edit, message: str) -> None:
    options = _csv_dataset(tmp_path)
    edit(tmp_path)
    spec = plugins.datasets.get("labelled_csv")
    with pytest.raises(DataError, match=message):
        spec.load(spec.options(**options))


@pytest.mark.parametrize("options", [{}, {"alpha": 50.0, "standardize": False}])
def test_head_contract(plugins: tlkit.plugins.Plugins, options: dict) -> None:
    report = tlkit.testing.check_head("ridge", options, plugins=plugins)
    assert report.test_accuracy >= 0.9


def test_ridge_solution_is_the_optimum_in_both_forms() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    targets = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    w = solve_ridge(z, targets, alpha=0.7)
    gradient = z.T @ (z @ w.T - targets) + 0.7 * w.T  # zero at the minimum
    assert torch.allclose(gradient, torch.zeros_like(gradient), atol=1e-10)
    wide = torch.randn(4, 9, generator=gen, dtype=torch.float64)  # more features than rows: the dual form
    t = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    dual = solve_ridge(wide, t, alpha=0.3)
    primal = torch.linalg.solve(wide.T @ wide + 0.3 * torch.eye(9, dtype=torch.float64), wide.T @ t).T
    assert torch.allclose(dual, primal, atol=1e-10)


def test_a_wrong_declared_feature_dim_fails_the_check_saying_what_differs() -> None:
    """What a plugin author sees when a declaration drifts from the model."""
    import dataclasses
    import types

    from tlkit_example_plugin.backbones import lite0_stage_spec

    wrong = types.ModuleType("tlkit_example_wrong")
    wrong.register_backbones = tlkit.hookimpl(
        lambda register: register(dataclasses.replace(lite0_stage_spec(4), name="lite0_wrong", feature_dim=100)),
        specname="register_backbones",
    )
    plugins = tlkit.testing.load_plugin(wrong, builtins=False)
    with pytest.raises(AssertionError, match="backbone 'lite0_wrong' declares feature_dim 100 but produces 112-d features"):
        tlkit.testing.check_backbone("lite0_wrong", plugins=plugins, images=2)
