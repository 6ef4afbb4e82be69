"""Heads that cannot silently collapse, and the interpretation a person reads after a run: features
at any scale (a random-weight backbone gives ~1e-9), the warning when a head predicts one class for
everything or the features do not vary, the most-confused pairs, and the confusion matrix printed
only where it fits the terminal."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder, write_recipe

import tlkit
from tlkit.cli.app import main
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins
from tlkit.contract.specs import Features, FitContext
from tlkit.fitting import Standardize

HEADS = load_plugins(entry_points=False).heads


def blobs(scale: float, seed: int = 0, n: int = 30, dim: int = 32, classes: int = 3) -> tuple[Features, Features]:
    """Train and test Gaussian clusters, shifted positive like post-ReLU features, then multiplied by ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(classes, dim, generator=generator)
    def split(count: int) -> Features:
        y = torch.arange(classes).repeat_interleave(count)
        x = centres[y] + torch.randn(len(y), dim, generator=generator) + 10.0
        return Features((x * scale).float(), y)
    return split(n), split(n // 2)


def fitted(head: str, train: Features) -> torch.nn.Module:
    spec = HEADS.get(head)
    ctx = FitContext(num_classes=int(train.y.max()) + 1, seed=0, monitor=None, report=lambda epoch, point: None)
    return spec.fit(train, spec.options(), ctx).module.eval()


@pytest.mark.parametrize("head", ["linear", "logreg"])
@pytest.mark.parametrize("scale", [1e-9, 1.0, 1e4])
def test_linear_and_logreg_learn_at_any_feature_scale(head: str, scale: float) -> None:
    """Features ~1e-9 (a random-weight backbone) once made both heads predict one class for every image."""
    train, test = blobs(scale)
    module = fitted(head, train)
    with torch.no_grad():
        predicted = module(test.x).argmax(1)
    assert len(predicted.unique()) == 3
    assert float((predicted == test.y).float().mean()) >= 0.9


def common_factor(seed: int, n: int = 120, dim: int = 256) -> Features:
    """Two classes on one strong factor shared by every feature, as in random-weight CNN features (a huge top singular value)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(2).repeat_interleave(n // 2)
    direction = torch.rand(dim, generator=generator) + 0.5
    factor = torch.randn(n, 1, generator=generator) + 0.3 * (2 * y.float() - 1)[:, None]
    return Features((factor * direction + 0.3 * torch.randn(n, dim, generator=generator)).float(), y)


@pytest.mark.parametrize("seed", [0, 1])
def test_logreg_moves_off_zero_where_the_first_lbfgs_step_overshoots(seed: int) -> None:
    """Stepping L-BFGS one iteration at a time once gave each step one evaluation, so a first step that overshot
    was never shortened: the fit stayed at zero and predicted one class (45.8% on ants/bees, resnet18@none)."""
    spec = HEADS.get("logreg")
    history: list[dict[str, float]] = []
    trained = spec.fit(common_factor(seed), spec.options(), FitContext(num_classes=2, seed=0, report=lambda epoch, point: history.append(dict(point))))
    test = common_factor(seed + 100)
    with torch.no_grad():
        predicted = trained.module(test.x).argmax(1)
    assert len(history) > 2 and history[-1]["loss"] < history[0]["loss"] - 0.05
    assert len(predicted.unique()) == 2


def test_standardize_uses_a_relative_epsilon() -> None:
    x = torch.tensor([[1e-9, 5.0], [3e-9, 5.0], [2e-9, 5.0]])
    scaled = Standardize.fitted(x)(x)
    torch.testing.assert_close(scaled[:, 0], torch.tensor([-1.2247, 1.2247, 0.0]), atol=1e-3, rtol=0)
    assert torch.equal(scaled[:, 1], torch.zeros(3))  # constant (up to float rounding): 0, never 1/eps noise
    big = torch.tensor([[1e6 + 4.0], [1e6], [1e6]])  # 64 float32 steps at 1e6: a real (if small) variation
    assert float(Standardize.fitted(big)(big)[0, 0]) > 1.0
    rounding = torch.tensor([[1e6 + 0.0625], [1e6], [1e6]])  # one float32 step: rounding, not a feature
    assert float(Standardize.fitted(rounding)(rounding).abs().max()) < 0.1


class ConstantBackbone(torch.nn.Module):
    """Every image -> the same vector: the forced collapse (features with zero variance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), 4) * 0.5 + 0.0 * x.mean()


class ConstantPlugin:
    __name__ = "tests-constant"

    @tlkit.hookimpl
    def register_backbones(self, register: Any) -> None:
        register(
            tlkit.BackboneSpec(
                name="constant",
                build=lambda weights, options: tlkit.BuiltBackbone(model=ConstantBackbone(), weights_id="constant"),
                preprocessing=tlkit.Preprocessing(crop_size=16, resize_size=16, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                feature_dim=4,
                description="the same vector for every image (tests)",
            )
        )


@pytest.fixture
def collapse_plugins() -> Iterator[Plugins]:
    from tiny import TinyPlugin

    loaded = load_plugins(entry_points=False, extra=[TinyPlugin(), ConstantPlugin()])
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(None)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    return out, err


def test_a_collapsed_head_is_named_in_the_summary_metrics_report_and_compare(collapse_plugins, tmp_path: Path, capsys) -> None:
    root = make_image_folder(tmp_path / "data", classes=("cats", "dogs", "fish"), n_train=4, n_test=3)
    recipe = write_recipe(tmp_path / "r.yaml", root, backbone={"name": "constant"}, extract={"cache": False})
    out, err = cli(["run", str(recipe), "--out", str(tmp_path / "run")], capsys)
    assert "predicted one class" in out and "predicted one class" in err  # a summary row and a warning line
    assert "do not vary" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["degenerate"]["single_class_prediction"] in ("cats", "dogs", "fish")
    assert metrics["degenerate"]["constant_features"] is True and metrics["degenerate"]["varying_features"] == 0
    assert len(metrics["warnings"]) == 2
    assert metrics["most_confused"] and all(len(pair) == 3 and pair[0] != pair[1] for pair in metrics["most_confused"])
    assert metrics["class_counts"] == {"train": {"cats": 4, "dogs": 4, "fish": 4}, "test": {"cats": 3, "dogs": 3, "fish": 3}}
    assert "predicted one class" in (tmp_path / "run" / "report.html").read_text()

    out, _ = cli(["compare", str(recipe), "--backbones", "constant", "--backbones", "tiny_cnn", "--heads", "linear,logreg", "--out", str(tmp_path / "cmp")], capsys)
    assert "one class for all" in out and "warning" in out
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    flagged = {(r["backbone"], r["head"]): r["warning"] for r in data["results"]}
    assert flagged[("constant", "linear")].startswith("one class for all") and flagged[("constant", "logreg")].startswith("one class for all")
    assert flagged[("tiny_cnn", "linear")] == "" and flagged[("tiny_cnn", "logreg")] == ""  # separable colours: no false alarm
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        in_csv = {(row["backbone"], row["head"]): row["warning"] for row in csv.DictReader(fh)}
    assert in_csv == flagged
    for r in data["results"]:
        run_metrics = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert bool(run_metrics["degenerate"]["single_class_prediction"]) == (r["backbone"] == "constant")


def test_single_class_is_not_flagged_when_the_test_split_has_one_class() -> None:
    from tlkit.outputs.degenerate import check

    x = torch.randn(10, 3)
    assert check(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), ["a", "b"]).single_class is None
    found = check(x, torch.tensor([0, 1, 1]), torch.tensor([1, 1, 1]), ["a", "b"])
    assert found.single_class == "b" and found.varying_features == 3 and not found.warnings()[1:]


def test_most_confused_lists_the_off_diagonal_cells_largest_first() -> None:
    from tlkit.outputs.metrics import most_confused

    matrix = [[5, 2, 0], [3, 4, 1], [0, 2, 7]]
    assert most_confused(matrix, ["a", "b", "c"]) == [["b", "a", 3], ["a", "b", 2], ["c", "b", 2], ["b", "c", 1]]
    assert most_confused([[3, 0], [0, 3]], ["a", "b"]) == []


def printed(monkeypatch: pytest.MonkeyPatch, width: int, *args: Any) -> str:
    import io

    from rich.console import Console

    from tlkit.cli import console

    buffer = io.StringIO()
    fake = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    monkeypatch.setattr(console, "_console", lambda stderr: fake)
    console.print_evaluation(*args)
    return buffer.getvalue()


def test_the_confusion_matrix_is_printed_only_where_it_fits_and_the_pairs_always(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.outputs.metrics import classification_metrics

    classes = [f"flower_class_{i:02d}" for i in range(12)]
    y_true = torch.arange(12).repeat(3)
    y_pred = y_true.clone()
    y_pred[:5] = torch.tensor([1, 0, 3, 3, 3])  # 0->1, 1->0, 2->3 and two more right answers
    test = classification_metrics(y_true, y_pred, classes).to_dict()
    narrow = printed(monkeypatch, 100, test, classes)
    assert "12 classes do not fit 100 columns" in narrow and "true \\ predicted" not in narrow
    assert "most confused" in narrow and "flower_class_02" in narrow
    pairs = [line for line in narrow.splitlines() if "flower_class_00" in line and "flower_class_01" in line]
    assert pairs and "1" in pairs[0]
    wide = printed(monkeypatch, 400, test, classes)
    assert "true \\ predicted" in wide and "do not fit" not in wide and "most confused" in wide
    two = printed(monkeypatch, 100, classification_metrics(torch.tensor([0, 1]), torch.tensor([0, 1]), ["a", "b"]).to_dict(), ["a", "b"])
    assert "true \\ predicted" in two and "none (no test image was misclassified)" in two
