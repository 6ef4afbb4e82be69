"""The runtime layer inside real runs: what runs is recorded, fallbacks end in a correct torch run.

Tiny data sets make ``auto`` stay on torch, so these tests name the runtime explicitly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from feature_helpers import TinyPlugin

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


def run_tiny(folder: Path, out: Path, **extract: object) -> tuple[dict, list[str]]:
    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run

    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    data = {
        "name": "tiny", "seed": 0, "dataset": {"root": str(folder)}, "backbone": {"name": "tiny_cnn", "weights": "none"},
        "extract": {"workers": 0, "cache": False, **extract}, "head": {"epochs": 5, "eval_every": 5},
    }
    notes: list[str] = []

    class Notes(Observer):
        def note(self, text: str) -> None:
            notes.append(text)

    result = run(resolve(data, plugins), out, Notes())
    return json.loads((result.out_dir / "metrics.json").read_text()), notes


def runtime_notes(notes: list[str]) -> list[str]:
    return [n for n in notes if n.startswith("runtime: ")]


def test_a_converted_runtime_is_recorded_and_reused(image_folder: Path, tmp_path: Path) -> None:
    first, notes = run_tiny(image_folder, tmp_path / "one", runtime="onnxruntime")
    record = first["features"]["runtime"]
    assert record["runtime"] == "onnxruntime" and record["precision"] == "fp32" and record["agreement"] >= 0.99999
    assert record["conversion_s"] > 0 and first["features"]["decoder"].startswith("fast")
    assert len(runtime_notes(notes)) == 1
    second, notes = run_tiny(image_folder, tmp_path / "two", runtime="onnxruntime")
    assert second["features"]["runtime"]["reused"] and second["features"]["runtime"]["conversion_s"] == 0.0
    assert "stored model reused" in runtime_notes(notes)[0]
    reference, _ = run_tiny(image_folder, tmp_path / "three", runtime="torch")
    assert second["test_accuracy"] == reference["test_accuracy"]


def test_runtime_missing_gives_a_torch_run_with_one_note(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    metrics, notes = run_tiny(image_folder, tmp_path / "run", runtime="openvino")
    assert metrics["features"]["runtime"]["runtime"] == "torch"
    assert runtime_notes(notes) == [metrics["features"]["runtime"]["note"]]
    assert "openvino is not installed" in runtime_notes(notes)[0]
    reference, _ = run_tiny(image_folder, tmp_path / "torch", runtime="torch")
    assert metrics["test_accuracy"] == reference["test_accuracy"]


def test_auto_on_a_tiny_data_set_stays_on_torch_and_says_why_in_the_record(image_folder: Path, tmp_path: Path) -> None:
    metrics, notes = run_tiny(image_folder, tmp_path / "run")
    record = metrics["features"]["runtime"]
    assert record["requested"] == "auto" and record["runtime"] == "torch" and "too few" in record["reason"]
    assert runtime_notes(notes) == []


def test_a_run_on_int8_predicts_in_eager_fp32_with_its_own_classes(image_folder: Path, tmp_path: Path) -> None:
    """model.json of an int8 run says int8; eager predict (no converted runtime) must still run, in fp32."""
    from PIL import Image

    import tlkit
    from tlkit.contract.plugin_manager import load_plugins, set_plugins

    metrics, _ = run_tiny(image_folder, tmp_path / "run", runtime="onnxruntime", precision="int8")
    assert metrics["features"]["runtime"]["precision"] == "int8"
    assert json.loads((tmp_path / "run" / "model.json").read_text())["pipeline"]["precision"] == "int8"
    set_plugins(load_plugins(entry_points=False, extra=[TinyPlugin()]))
    try:
        model = tlkit.load(tmp_path / "run")
        test_images = sorted((image_folder / "val").rglob("*.jpg"))
        from_files, from_pil = model.predict(test_images), model.predict([Image.open(p) for p in test_images])
    finally:
        set_plugins(None)
    assert len(from_files) == len(test_images) and [p.label for p in from_files] == [p.label for p in from_pil]
    assert {p.label for p in from_files} <= {"cats", "dogs"}
