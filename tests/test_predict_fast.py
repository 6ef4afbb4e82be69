"""Predict through a run's fast path (its feature cache, its runtime), split_of by content, the warm rerun, the command's wall time.

One tiny run with the feature cache on and ONNX Runtime as its runtime (tests/tiny_runs.py's
generated images and timm's 99k-parameter ``test_efficientnet``), shared by the module: its cache
folder is put back for each test, since the autouse fixture gives every test a fresh one.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CLASS_COLOURS, make_image
from tiny_runs import ARCH, make_data, make_weights

from tlkit.contract.observer import Observer
from tlkit.contract.plugin_manager import load_plugins
from tlkit.recipe.loader import resolve
from tlkit.run.engine import run
from tlkit.saved.model import Model
from tlkit.saved.reader import image_files, load_model, predict
from tlkit.saved.run_features import run_store
from tlkit.util import clock

TOLERANCE = 1e-5


def _recipe(root: Path, weights: Path, **extract: Any) -> dict[str, Any]:
    settings = {"workers": 0, "batch_size": 8, "cache": True, "runtime": "onnxruntime", **extract}
    return {"name": "tiny", "dataset": {"root": str(root)}, "backbone": {"name": f"timm:{ARCH}", "weights": str(weights)}, "extract": settings, "head": {"name": "linear", "epochs": 50}}


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fast")
    cache = base / "cache"
    old = {"TLKIT_CACHE_DIR": str(cache)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TLKIT_CACHE_DIR", old["TLKIT_CACHE_DIR"])
        root = make_data(base / "data")
        weights = make_weights(base / "weights.pth")
        plugins = load_plugins(entry_points=False)
        out = run(resolve(_recipe(root, weights), plugins), base / "run").out_dir
    return {"root": root, "weights": weights, "run": out, "cache": cache}


@pytest.fixture
def fast(cached_run: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """The shared run, with a copy of its cache folder as this test's cache (tests may damage it)."""
    cache = tmp_path / "cache"
    shutil.copytree(cached_run["cache"], cache)
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(cache))
    return {**cached_run, "cache": cache}


def _recorded(run_dir: Path) -> dict[str, float]:
    with (run_dir / "predictions.csv").open(newline="") as fh:
        return {row["path"]: float(row["confidence"]) for row in csv.DictReader(fh)}


def _agrees(result: Any, run_dir: Path) -> None:
    saved = _recorded(run_dir)
    assert sorted(map(str, result.paths)) == sorted(saved) and not result.bad
    for path, probabilities in zip(result.paths, result.probabilities):
        assert abs(float(probabilities.max()) - saved[str(path)]) <= TOLERANCE


def test_cached_images_are_answered_from_the_runs_cache_without_building_the_backbone(plugins, fast: dict[str, Path]) -> None:
    model = load_model(fast["run"], plugins, lazy_backbone=True)
    result = predict(model, image_files([fast["root"] / "val"]), workers=0)
    assert result.cached == len(result.paths) and result.note == ""
    assert model._backbone is None  # nothing was computed: the backbone was never built
    _agrees(result, fast["run"])


def test_cache_off_runs_the_runs_own_runtime_and_agrees_with_predictions_csv(plugins, fast: dict[str, Path]) -> None:
    model = load_model(fast["run"], plugins, lazy_backbone=True)
    assert json.loads((fast["run"] / "model.json").read_text())["features"]["cache_extra"]["runtime"] == "onnxruntime"
    result = predict(model, image_files([fast["root"] / "val"]), workers=0, cache=False)
    assert result.cached == 0 and "onnxruntime" in result.note and "stored model reused" in result.note
    _agrees(result, fast["run"])


def test_new_images_are_computed_and_kept_in_the_runs_entry(plugins, fast: dict[str, Path], tmp_path: Path) -> None:
    new = [make_image(tmp_path / f"new_{i}.jpg", CLASS_COLOURS[i], seed=10 + i) for i in range(2)]
    model = load_model(fast["run"], plugins, lazy_backbone=True)
    first = predict(model, new, workers=0)
    assert first.cached == 0 and len(first.paths) == 2
    again = predict(load_model(fast["run"], plugins, lazy_backbone=True), new, workers=0)
    assert again.cached == 2
    assert torch.allclose(first.probabilities, again.probabilities, atol=TOLERANCE)


def test_split_of_answers_by_content_not_path(plugins, fast: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model(load_model(fast["run"], plugins, lazy_backbone=True))
    train_image = sorted((fast["root"] / "train" / "cats").iterdir())[0]
    test_image = sorted((fast["root"] / "val" / "dogs").iterdir())[0]
    assert model.split_of(train_image.resolve()) == "train"
    monkeypatch.chdir(train_image.parent)
    assert model.split_of(train_image.name) == "train"  # relative to the working directory
    copy = shutil.copy(train_image, tmp_path / "renamed-elsewhere.jpg")
    assert model.split_of(copy) == "train"
    assert model.split_of(test_image) == "test"
    assert model.split_of(make_image(tmp_path / "unseen.jpg", (1, 2, 3), seed=99)) is None
    assert model.split_of(tmp_path / "missing.jpg") is None


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in (cache / "features").iterdir() if p.is_dir()]
    return entry


def test_hostile_an_entry_that_states_another_identity_is_not_read(plugins, fast: dict[str, Path]) -> None:
    meta = _entry(fast["cache"]) / "entry.json"
    data = json.loads(meta.read_text())
    data["identity"]["backbone"] = "someone-else"
    meta.write_text(json.dumps(data))
    model = load_model(fast["run"], plugins, lazy_backbone=True)
    assert run_store(model) is None
    result = predict(model, image_files([fast["root"] / "val"]), workers=0)
    assert result.cached == 0  # computed, not read from the foreign entry
    _agrees(result, fast["run"])


@pytest.mark.parametrize("damage", ["tampered values", "wrong dimension"])
def test_hostile_a_damaged_chunk_is_not_trusted(plugins, fast: dict[str, Path], damage: str) -> None:
    from safetensors.torch import load_file, save_file

    for chunk in _entry(fast["cache"]).glob("chunk-*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(chunk), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(chunk))
        if damage == "tampered values":  # the checksum in the header no longer matches
            tensors = {k: v + 0.5 for k, v in tensors.items()}
        else:  # vectors of another length, with a header that claims them
            tensors = {k: torch.zeros(7) for k in tensors}
            meta = {**meta, "dim": "7"}
        save_file(tensors, str(chunk), metadata=meta)
    model = load_model(fast["run"], plugins, lazy_backbone=True)
    result = predict(model, image_files([fast["root"] / "val"]), workers=0)
    assert result.cached == 0
    _agrees(result, fast["run"])


def test_warm_rerun_skips_the_backbone_and_gives_the_same_run(plugins, fast: dict[str, Path], tmp_path: Path) -> None:
    from tlkit.run import warm

    recipe = resolve(_recipe(fast["root"], fast["weights"]), plugins)
    assert warm.warm_prepare(recipe) is not None  # the module's run remembered its choice; every feature is cached
    notes: list[str] = []

    class Notes(Observer):
        def note(self, text: str) -> None:
            notes.append(text)

    again = run(recipe, tmp_path / "again", Notes()).out_dir
    assert any("the backbone was not built" in n for n in notes)
    first, second = (json.loads((d / "model.json").read_text()) for d in (fast["run"], again))
    assert first == second  # the same identity, weights sha256, pipeline and runtime recorded
    assert (fast["run"] / "predictions.csv").read_bytes() == (again / "predictions.csv").read_bytes()
    fast["weights"].touch()  # the weights file may have changed: build and hash it again
    assert warm.warm_prepare(recipe) is None


def test_hostile_a_tampered_memo_is_ignored(plugins, fast: dict[str, Path]) -> None:
    from tlkit.run import warm

    recipe = resolve(_recipe(fast["root"], fast["weights"]), plugins)
    (memo,) = (fast["cache"] / warm.FOLDER).glob("*.json")
    data = json.loads(memo.read_text())
    data["record"]["weights_id"] = "0" * 64  # would name another cache entry
    memo.write_text(json.dumps(data))
    assert warm.warm_prepare(recipe) is None


def test_summary_time_is_the_commands_wall_time(plugins, fast: dict[str, Path], tmp_path: Path) -> None:
    clock._started = time.time() - 30.0  # as if importing and loading had taken 30 s before the run began
    try:
        result = run(resolve(_recipe(fast["root"], fast["weights"]), plugins), tmp_path / "timed")
    finally:
        clock.reset()
    assert result.metrics.timings_s["total"] >= 30.0


def test_process_start_time_counts_the_interpreters_start() -> None:
    """The child's own age at its last line: at least its 1 s sleep, at most what the parent timed around it.

    (From ``btime``, whole seconds, it could read up to a second more than the parent saw.)
    """
    code = "import time; time.sleep(1.0); from tlkit.util.clock import process_start_time as s; print(time.time() - s())"
    started = time.time()
    shown = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    outside = time.time() - started
    assert 1.0 <= shown <= outside + 0.02  # one 10 ms clock tick of slack


def test_plots_are_kept_by_their_inputs_and_a_tampered_one_is_drawn_again(fast: dict[str, Path], tmp_path: Path) -> None:
    from tlkit.outputs.plot_cache import FOLDER, drawn

    calls: list[Path] = []

    def draw(path: Path) -> Path:
        calls.append(path)
        path.write_bytes(b"\x89PNG drawn " + str(len(calls)).encode())
        return path

    inputs = {"matrix": [[1, 2], [3, 4]]}
    first = drawn("confusion_matrix.png", inputs, tmp_path / "a.png", lambda: draw(tmp_path / "a.png"))
    second = drawn("confusion_matrix.png", inputs, tmp_path / "b.png", lambda: draw(tmp_path / "b.png"))
    assert len(calls) == 1 and first and second and second.read_bytes() == first.read_bytes()
    drawn("confusion_matrix.png", {"matrix": [[2, 1], [3, 4]]}, tmp_path / "c.png", lambda: draw(tmp_path / "c.png"))
    assert len(calls) == 2  # other inputs: drawn
    (kept,) = [p for p in (fast["cache"] / FOLDER).glob("*.png") if p.read_bytes() == first.read_bytes()]
    kept.write_bytes(b"\x89PNG altered")
    third = drawn("confusion_matrix.png", inputs, tmp_path / "d.png", lambda: draw(tmp_path / "d.png"))
    assert len(calls) == 3 and third and third.read_bytes() != b"\x89PNG altered"


def test_pt2_export_is_the_runs_own_file_and_returns_plain_tensors(plugins, fast: dict[str, Path], tmp_path: Path) -> None:
    from tlkit.saved.export import export
    from tlkit.saved.run_directory import RunDirectory

    run_dir = shutil.copytree(fast["run"], tmp_path / "run")
    result = export(load_model(run_dir, plugins), "pt2")
    assert result.path == run_dir / "model.pt2"
    program = torch.export.load(str(result.path)).module()
    crop = json.loads((run_dir / "model.json").read_text())["pipeline"]["preprocessing"]["crop_size"]
    out = program(torch.rand(2, 3, crop, crop))
    assert not out.requires_grad and out.grad_fn is None
    RunDirectory(run_dir).discard()  # rerunning the recipe into this --out is accepted: model.pt2 is tlkit's own
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="notes.txt"):
        RunDirectory(run_dir)


def _imports_after(code: str, env: dict[str, str] | None = None) -> dict[str, bool]:
    import os

    probe = f"{code}\nimport sys, json; print(json.dumps({{m: m in sys.modules for m in ('torchvision', 'timm', 'openvino', 'onnxruntime', 'matplotlib')}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_plugins_for_a_named_backbone_do_not_import_the_torchvision_and_timm_catalogues() -> None:
    code = "from tlkit.contract.plugin_manager import get_plugins\np = get_plugins()\np.backbones.get('efficientnet_lite0'); p.heads.get('linear')"
    assert not any(_imports_after(code, {"TLKIT_LOAD_PLUGINS": ""}).values())


def test_deferred_built_ins_register_only_names_their_patterns_announce() -> None:
    import fnmatch

    from tlkit.contract.plugin_manager import DEFERRED_PLUGINS

    plugins = load_plugins(entry_points=False, defer=False)
    for module, patterns in DEFERRED_PLUGINS.items():
        status = plugins.status["tlkit:" + module.rsplit(".", 1)[-1]]
        names = status.registered["backbones"]
        assert names and all(any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names)
    deferred = load_plugins(entry_points=False)
    assert "torchvision:resnet50" in deferred.backbones and deferred.backbones.names("timm:resnet18*")  # loaded on demand


def test_hostile_a_plugin_taking_a_name_inside_a_deferred_catalogue_is_a_duplicate_at_once() -> None:
    import tlkit
    from tlkit.errors import RegistryError

    class Squatter:
        __name__ = "tests-squatter"

        @tlkit.hookimpl
        def register_backbones(self, register: Any) -> None:
            register(tlkit.BackboneSpec(name="resnet18", build=lambda request, options: None, preprocessing=tlkit.Preprocessing(crop_size=8, resize_size=8, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)))

    with pytest.raises(RegistryError, match="resnet18.*both plugin"):
        load_plugins(entry_points=False, extra=[Squatter()])


def test_load_and_predict_cached_images_import_no_backbone_library(fast: dict[str, Path]) -> None:
    code = f"import tlkit\nmodel = tlkit.load({str(fast['run'])!r})\nmodel.predict({str(sorted((fast['root'] / 'val' / 'cats').iterdir())[0])!r})"
    assert not any(_imports_after(code, {"TLKIT_CACHE_DIR": str(fast["cache"]), "TLKIT_LOAD_PLUGINS": ""}).values())


def test_image_extensions_written_out_are_torchvisions() -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from tlkit.sources.image_files import EXTENSIONS

    assert EXTENSIONS == tuple(IMG_EXTENSIONS)
