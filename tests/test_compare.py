"""`tlkit compare`: pattern expansion, bootstrap intervals and paired ties, and a small real comparison."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, write_recipe

from tlkit.cli.app import main
from tlkit.errors import RecipeError
from tlkit.run.compare import Candidate, Result, bootstrap, expand_backbones


def _result(name: str, correct: list[bool]) -> Result:
    c = torch.tensor(correct)
    return Result(Candidate(name), "linear", float(c.float().mean()), 0.0, 8, 10, None, Path("."), c)


def test_bootstrap_intervals_and_paired_ties():
    n = 100
    good = _result("good", [True] * 95 + [False] * 5)
    twin = _result("twin", [True] * 94 + [False] * 6)  # one image apart: the paired bootstrap cannot separate them
    bad = _result("bad", [i % 2 == 0 for i in range(n)])
    results = [good, twin, bad]
    bootstrap(results, samples=1000, seed=0)
    assert good.ci[0] < 0.95 < good.ci[1] and good.ci[1] - good.ci[0] < 0.15
    assert bad.ci[1] < good.ci[0]
    assert good.ties_with == [2] and twin.ties_with == [1] and bad.ties_with == []
    again = [_result("good", [True] * 95 + [False] * 5), _result("bad", [i % 2 == 0 for i in range(n)])]
    bootstrap(again, samples=1000, seed=0)
    assert again[0].ci == pytest.approx(good.ci)  # seeded: the same figures every time


def test_patterns_expand_over_the_registry_and_skip_missing_weights(tiny_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision weights here
    candidates, skipped = expand_backbones(["tiny*", "resnet18", "resnet18@none", "tiny_cnn"], tiny_plugins)
    assert candidates == [Candidate("tiny_cnn"), Candidate("resnet18", "none")]
    assert skipped[0][0] == "resnet18" and "no pretrained weights offline" in skipped[0][1]
    with pytest.raises(RecipeError, match="matches no registered backbone; did you mean 'tiny_cnn'"):
        expand_backbones(["tiny_cn"], tiny_plugins)


def test_compare_writes_a_ranked_table_json_csv_and_chart(tiny_plugins, tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", n_train=6, n_test=4)
    recipe = write_recipe(tmp_path / "r.yaml", root)
    with pytest.raises(SystemExit) as info:
        main(["compare", str(recipe), "--backbones", "tiny_cnn", "--heads", "linear,centroid", "--out", str(tmp_path / "cmp")])
    assert info.value.code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "95% interval" in out and "tiny_cnn" in out and "centroid" in out
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["rank"] for r in data["results"]] == [1, 2]
    assert {r["head"] for r in data["results"]} == {"linear", "centroid"}
    accuracies = [r["test_accuracy"] for r in data["results"]]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(r["ci_low"] <= r["test_accuracy"] <= r["ci_high"] for r in data["results"])
    assert data["results"][0]["images_per_s"] is not None  # the one extraction, timed
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        assert [row["head"] for row in csv.DictReader(fh)] == [r["head"] for r in data["results"]]
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert all((Path(r["run_dir"]) / "metrics.json").is_file() for r in data["results"])


def test_compare_ranks_the_rows_in_memory_and_never_reads_predictions_csv(tiny_plugins, tmp_path, monkeypatch):
    """The correctness vectors come from each run's PredictionRows: a predictions.csv that says the opposite changes nothing."""
    import tlkit.run.write
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.compare import compare

    real = tlkit.run.write.write_predictions

    def lying(run_dir, rows, errors):  # every row written as a mistake, whatever the head predicted
        real(run_dir, [dataclasses.replace(r, predicted_class="nothing") for r in rows], errors)

    monkeypatch.setattr(tlkit.run.write, "write_predictions", lying)
    root = make_image_folder(tmp_path / "data", n_train=6, n_test=4)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", root), tiny_plugins)
    comparison = compare(recipe, ["tiny_cnn"], ["centroid"], tiny_plugins, tmp_path / "cmp")
    (result,) = comparison.results
    with (result.run_dir / "predictions.csv").open(newline="") as fh:
        assert {row["predicted_class"] for row in csv.DictReader(fh)} == {"nothing"}
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert int(result.correct.sum()) == metrics["test"]["correct"] > 0 and len(result.correct) == 8


def test_a_failing_candidate_is_its_own_row_and_the_others_still_run(tiny_plugins, tmp_path, capsys, monkeypatch):
    """One candidate failing (a plugin error, out of memory) is recorded as its row, named, with its one-line reason; the rest run, exit 0."""
    import tlkit.run.stages

    real = tlkit.run.stages.prepare

    def failing_for_random_weights(recipe, progress):
        if recipe.weights.kind == "random":
            raise RuntimeError("CUDA out of memory (simulated)\nsecond line of a long message")
        return real(recipe, progress)

    monkeypatch.setattr(tlkit.run.stages, "prepare", failing_for_random_weights)
    root = make_image_folder(tmp_path / "data", n_train=6, n_test=4)
    recipe = write_recipe(tmp_path / "r.yaml", root)
    with pytest.raises(SystemExit) as info:
        main(["compare", str(recipe), "--backbones", "tiny_cnn@none", "--backbones", "tiny_cnn", "--heads", "centroid", "--out", str(tmp_path / "cmp")])
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    assert "Traceback" not in captured.err
    assert "tiny_cnn@none" in captured.out + captured.err and "CUDA out of memory (simulated)" in captured.out + captured.err
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [(r["backbone"], r["weights"]) for r in data["results"]] == [("tiny_cnn", "default")]
    (failed,) = data["failed"]
    assert failed["backbone"] == "tiny_cnn" and failed["weights"] == "none" and failed["head"] == "centroid"
    assert failed["error"] == "RuntimeError: CUDA out of memory (simulated)"
    with (tmp_path / "cmp" / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(row["backbone"], row["weights"], row["rank"]) for row in rows] == [("tiny_cnn", "default", "1"), ("tiny_cnn", "none", "")]
    assert rows[1]["error"] == "RuntimeError: CUDA out of memory (simulated)" and rows[0]["error"] == ""


def test_compare_fails_in_one_line_when_every_candidate_fails(tiny_plugins, tmp_path, capsys, monkeypatch):
    import tlkit.run.stages

    def failing(recipe, progress):
        raise RuntimeError("broken plugin")

    monkeypatch.setattr(tlkit.run.stages, "prepare", failing)
    root = make_image_folder(tmp_path / "data", n_train=6, n_test=4)
    recipe = write_recipe(tmp_path / "r.yaml", root)
    with pytest.raises(SystemExit) as info:
        main(["compare", str(recipe), "--backbones", "tiny_cnn", "--heads", "centroid", "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "tiny_cnn + centroid: RuntimeError: broken plugin" in err
