"""Evaluation a person can read: metrics.json, errors.csv, predictions.csv and the PNGs agree, and
``tlkit run`` prints the per-class table and the confusion matrix."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tiny_runs import CLASSES, make_data, make_run, make_weights

from tlkit.cli.app import main
from tlkit.outputs import plots
from tlkit.outputs.metrics import classification_metrics
from tlkit.outputs.predictions import PredictionRow, misclassified, prediction_rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 200


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tiny")
    return make_data(base / "data"), make_weights(base / "weights.pth")


def test_metrics_errors_and_plots_agree(plugins, tiny: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = tiny
    out = make_run(plugins, root, tmp_path / "run", str(weights))
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    cm = torch.tensor(test["confusion_matrix"])
    predictions = read_csv(out / "predictions.csv")
    errors = read_csv(out / "errors.csv")

    assert int(cm.sum()) == test["count"] == metrics["counts"]["test"] == len(predictions) == 11
    assert int(cm.diag().sum()) == test["correct"] == sum(r["true_class"] == r["predicted_class"] for r in predictions)
    assert len(errors) == metrics["test_errors"] == test["count"] - test["correct"] >= 1
    assert metrics["test_accuracy"] == pytest.approx(test["correct"] / test["count"])
    # every off-diagonal cell is exactly the errors of that (true, predicted) pair
    pairs = Counter((r["true_class"], r["predicted_class"]) for r in errors)
    for i, true in enumerate(CLASSES):
        assert test["per_class"][true]["support"] == int(cm[i].sum())
        for j, predicted in enumerate(CLASSES):
            if i != j:
                assert int(cm[i, j]) == pairs[(true, predicted)]
    # errors.csv is the wrong rows of predictions.csv, most confident first, with real files
    assert sorted(map(tuple, (r.values() for r in errors))) == sorted(
        tuple(r.values()) for r in predictions if r["true_class"] != r["predicted_class"]
    )
    confidences = [float(r["confidence"]) for r in errors]
    assert confidences == sorted(confidences, reverse=True)
    for row in errors:
        assert Path(row["path"]).is_file() and Path(row["path"]).parent.name == row["true_class"]
        assert 1 / len(CLASSES) <= float(row["confidence"]) <= 1 and float(row["true_class_probability"]) <= float(row["confidence"])
    assert_png(out / "confusion_matrix.png")
    assert_png(out / "training_curve.png")  # logreg is iterative: its L-BFGS iterations are the curve
    assert len(metrics["history"]) >= 2 and {"loss", "train_accuracy", "test_accuracy"} <= set(metrics["history"][0])


def test_a_test_split_lacking_a_class_is_evaluated_and_plotted(plugins, tiny: tuple[Path, Path], tmp_path: Path) -> None:
    root, weights = tiny
    data = tmp_path / "data"
    shutil.copytree(root, data)
    shutil.rmtree(data / "val" / "fish")
    out = make_run(plugins, data, tmp_path / "run", str(weights), head="knn")
    metrics = json.loads((out / "metrics.json").read_text())
    fish = metrics["test"]["per_class"]["fish"]
    assert fish["support"] == 0 and fish["recall"] is None
    assert metrics["test_balanced_accuracy"] is not None
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == len(read_csv(out / "predictions.csv")) == 8
    assert_png(out / "confusion_matrix.png")
    assert not (out / "training_curve.png").exists()  # knn has no training curve


def test_tlkit_run_prints_the_per_class_table_and_confusion_matrix(plugins, tiny: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, weights = tiny
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "dataset": {"root": str(root)},
                "backbone": {"name": "timm:test_efficientnet", "weights": str(weights)},
                "extract": {"workers": 0},
                "head": {"name": "centroid"},
            }
        )
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(recipe), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "per class (test)" in printed and "confusion matrix" in printed and "test errors" in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for name in CLASSES:
        row = next(line for line in printed.splitlines() if line.strip("│ ").startswith(name) and "0." in line)
        assert str(metrics["test"]["per_class"][name]["support"]) in row


def test_prediction_rows_and_misclassified() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    y = torch.tensor([0, 0, 1, 1])
    rows = prediction_rows(["a", "b", "c", "d"], y, probabilities, ["ants", "bees"])
    assert rows[1] == PredictionRow(path="b", true_class="ants", predicted_class="bees", confidence=0.7, true_class_probability=0.3, split="test")
    assert rows[1].csv_cells() == ("b", "ants", "bees", 0.7, 0.3) and not rows[1].correct and rows[0].correct
    assert [r.path for r in misclassified(rows)] == ["b", "c"]
    metrics = classification_metrics(y, probabilities.argmax(1), ["ants", "bees"])
    assert metrics.confusion_matrix == [[1, 1], [1, 1]] and metrics.correct == 2


def test_training_curve_needs_a_curve(tmp_path: Path) -> None:
    assert plots.training_curve_png([], tmp_path / "a.png") is None
    assert plots.training_curve_png([{"epoch": 1.0, "loss": 1.0}], tmp_path / "b.png") is None
    points = [{"epoch": float(e), "loss": 1 / e, "train_accuracy": 0.5 + e / 20, "val_loss": 2 / e} for e in range(1, 6)]
    assert_png(plots.training_curve_png(points, tmp_path / "c.png"))
    assert_png(plots.confusion_matrix_png([[3, 1, 0], [0, 2, 0], [0, 0, 0]], ["a", "b", "c"], tmp_path / "cm.png"))
