"""The model used anywhere: ``tlkit.load(run).predict`` reproduces predictions.csv, ``tlkit features``
writes the run's features, and docs/python.md's onnxruntime snippet (Pillow + NumPy + onnxruntime only)
gives ``tlkit predict``'s class."""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_runs import ARCH, make_data, make_weights

import tlkit
from tlkit.cli.app import main
from tlkit.errors import DataError

README = Path(__file__).resolve().parent.parent / "docs" / "python.md"  # the onnxruntime snippet (once in the README)
RUN_CACHE: list[str] = []  # the feature-cache folder the module's run used


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, run directory) of one logreg run with the feature cache on (the session's cache folder)."""
    from tlkit.contract.plugin_manager import load_plugins

    base = tmp_path_factory.mktemp("api")
    root = make_data(base / "data")
    weights = make_weights(base / "weights.pth")
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run

    recipe = resolve(
        {"name": "api", "dataset": {"root": str(root)}, "backbone": {"name": f"timm:{ARCH}", "weights": str(weights)},
         "extract": {"workers": 0, "batch_size": 8}, "head": {"name": "logreg"}},
        load_plugins(entry_points=False),
    )
    RUN_CACHE.append(os.environ["TLKIT_CACHE_DIR"])
    return root, run(recipe, base / "run").out_dir


def recorded(run_dir: Path) -> dict[str, tuple[str, float]]:
    with (run_dir / "predictions.csv").open(newline="") as fh:
        return {r["path"]: (r["predicted_class"], float(r["confidence"])) for r in csv.DictReader(fh)}


def cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code)


def test_load_predict_reproduces_predictions_csv(plugins, tiny_run: tuple[Path, Path]) -> None:
    _, run_dir = tiny_run
    saved = recorded(run_dir)
    model = tlkit.load(run_dir)
    predictions = model.predict(list(saved))
    assert [p.source for p in predictions] == list(saved)
    for p in predictions:
        label, confidence = saved[p.source]
        assert p.label == label and p.probability == pytest.approx(confidence, abs=1e-6)
        assert set(p.probabilities) == set(model.classes) and sum(p.probabilities.values()) == pytest.approx(1.0)
    assert model.split_of(next(iter(saved))) == "test" and model.split_of("/elsewhere.jpg") is None
    assert model.features(list(saved)[:2]).shape == (2, json.loads((run_dir / "metrics.json").read_text())["feature_dim"])


def test_pil_images_and_single_inputs_work_too(plugins, tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = tiny_run
    saved = recorded(run_dir)
    model = tlkit.load(run_dir)
    path = next(iter(saved))
    with Image.open(path) as img:
        image = img.convert("RGBA")  # transparency-capable mode: composited like a file would be
        (from_pil,) = model.predict(image)
    assert from_pil.label == saved[path][0] and from_pil.source == "<image 0>"
    mixed = model.probabilities([path, image])
    assert mixed.shape == (2, len(model.classes)) and np.allclose(mixed[0], mixed[1], atol=1e-5)
    with pytest.raises(DataError, match="cannot classify a int; give file paths or PIL images"):
        model.predict([42])
    assert model.predict([]) == [] and model.probabilities([]).shape == (0, len(model.classes))
    with pytest.raises(DataError, match="not an image file"):
        (tmp_path / "notes.jpg").write_text("no picture")
        model.predict([tmp_path / "notes.jpg"])


def test_features_command_writes_the_runs_features_as_npz_and_parquet(plugins, tiny_run: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    _, run_dir = tiny_run
    monkeypatch.setenv("TLKIT_CACHE_DIR", RUN_CACHE[-1])  # the cache the run filled (each test has its own otherwise)
    assert cli(["features", str(run_dir), "--out", str(tmp_path / "f.npz")]) == 0
    assert re.search(r"test \d+ images x \d+ features \((\d+) from the cache\)", capsys.readouterr().out).group(1) == str(18 + len(recorded(run_dir)))
    data = np.load(tmp_path / "f.npz")
    model = tlkit.load(run_dir)
    assert list(data["classes"]) == model.classes
    test_paths = [str(p) for p in data["paths_test"]]
    assert sorted(test_paths) == sorted(recorded(run_dir))
    np.testing.assert_allclose(data["x_test"], model.features(test_paths), atol=1e-5)
    assert [model.classes[y] for y in data["y_test"]] == [Path(p).parent.name for p in test_paths]
    assert len(data["x_train"]) == len(data["y_train"]) == len(data["paths_train"]) == 18
    pq = pytest.importorskip("pyarrow.parquet")
    assert cli(["features", str(run_dir), "--out", str(tmp_path / "f.parquet")]) == 0
    table = pq.read_table(tmp_path / "f.parquet").to_pydict()
    assert set(table["split"]) == {"train", "test"} and len(table["path"]) == 18 + len(test_paths)
    first = table["path"].index(test_paths[0])
    np.testing.assert_allclose(table["features"][first], data["x_test"][0], atol=1e-6)
    assert cli(["features", str(run_dir), "--out", str(tmp_path / "f.csv")]) == 2


def readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- onnx-snippet -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/python.md's onnxruntime snippet is marked <!-- onnx-snippet -->"
    return match.group(1)


def test_the_readme_onnxruntime_snippet_gives_tlkit_predicts_class(plugins, tiny_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    code = readme_snippet()
    tree = ast.parse(code)
    imports = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imports |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imports <= {"json", "sys", "numpy", "onnxruntime", "PIL"}, imports
    assert len(code.strip().splitlines()) <= 12
    root, run_dir = tiny_run
    script = tmp_path / "classify.py"
    script.write_text(code)
    assert cli(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    # a larger JPEG than the crop, so resize, draft decoding and the crop all matter
    big = tmp_path / "big.jpg"
    with Image.open(next((root / "val" / "fish").iterdir())) as img:
        img.resize((400, 300), Image.Resampling.BICUBIC).save(big, quality=92)
    images = [big, *sorted((root / "val").rglob("*.jpg"))[:4]]
    capsys.readouterr()
    assert cli(["predict", str(run_dir), *map(str, images), "--json"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for image, want in zip(images, expected):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "m.onnx"), str(image)], capture_output=True, text=True, timeout=120, check=True)
        label, probability = done.stdout.split()
        assert label == want["class"] and float(probability) == pytest.approx(want["probability"], abs=1e-3), (image, done.stdout, want)
