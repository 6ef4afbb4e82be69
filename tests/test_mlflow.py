"""The built-in ``mlflow`` observer against a real local MLflow file store, read back with MLflow's own client.

Must hold 7 of issue 20: params, per-epoch metrics and the run directory land in the store. Also: without
MLflow installed, turning it on is one line naming the extra; a tracking server that is down costs one
warning and never the run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from conftest import write_recipe

from tlkit.cli.app import main

pytest.importorskip("mlflow", reason="the 'test' extra installs mlflow-skinny")
from mlflow.tracking import MlflowClient  # noqa: E402


def cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


def _recipe(tmp_path: Path, root: Path, **mlflow: object) -> Path:
    return write_recipe(tmp_path / "r.yaml", root, head={"epochs": 6, "eval_every": 2}, observers={"mlflow": mlflow})


def test_a_run_logs_params_epoch_metrics_and_its_directory_to_a_local_mlflow_store(
    tiny_plugins, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the plugin sets it for a file store (MLflow 3 refuses one without)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = (tmp_path / "mlruns").as_uri()
    recipe = _recipe(tmp_path, image_folder, tracking_uri=store, experiment="ants")
    assert cli("run", str(recipe), "--out", str(tmp_path / "out")) == 0
    assert "warning" not in capsys.readouterr().err
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"

    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("ants").experiment_id])
    assert (run.info.status, run.info.run_name, run.data.tags["tlkit.recipe"]) == ("FINISHED", "t", "t")
    params = run.data.params
    assert (params["head.name"], params["head.epochs"], params["head.lr"], params["backbone.name"]) == ("linear", "6", "0.1", "tiny_cnn")
    assert params["dataset.root"] == str(image_folder) and params["extract.cache"] == "true"
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    history = client.get_metric_history(run.info.run_id, "epoch/loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert [m.value for m in history] == pytest.approx([p["loss"] for p in saved["history"]])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/test_accuracy")] == [2, 4, 6]
    assert run.data.metrics["test_accuracy"] == pytest.approx(saved["test_accuracy"])
    assert run.data.metrics["test_images"] == saved["counts"]["test"]
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "run.json", "recipe.yaml", "head.safetensors"} <= logged
    assert logged == {p.name for p in (tmp_path / "out").iterdir()}


def test_without_mlflow_turning_it_on_is_one_line_naming_the_extra(
    tiny_plugins, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError, as where it is not installed
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # restored after the plugin set it
    recipe = _recipe(tmp_path, image_folder, tracking_uri=(tmp_path / "mlruns").as_uri())
    assert cli("run", str(recipe), "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'observers.mlflow' needs MLflow, which is not installed: pip install 'tlkit[mlflow]'") and "\n" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns").exists()


def test_a_tracking_server_that_is_down_costs_one_warning_never_the_run(
    tiny_plugins, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)  # restored after the plugin set it
    recipe = _recipe(tmp_path, image_folder, tracking_uri=f"http://127.0.0.1:{port}")
    assert cli("run", str(recipe), "--out", str(tmp_path / "out")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: observer 'mlflow' failed at start (") and "the run goes on without it" in warnings[0]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["complete"] is True


def test_run_name_and_artifacts_off_are_honoured(tiny_plugins, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "mlruns").as_uri()
    recipe = _recipe(tmp_path, image_folder, tracking_uri=store, experiment="quiet", run_name="no-files", artifacts=False)
    assert cli("run", str(recipe), "--out", str(tmp_path / "out")) == 0
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("quiet").experiment_id])
    assert (run.info.run_name, run.info.status) == ("no-files", "FINISHED")
    assert client.list_artifacts(run.info.run_id) == [] and "test_accuracy" in run.data.metrics
