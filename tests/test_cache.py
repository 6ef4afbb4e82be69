"""The feature cache: per-image reuse by content, keys that change with the extractor, atomic chunks, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image, make_image_folder
from feature_helpers import TINY_IDENTITY, TINY_PRE, TinyCNN, TinyPlugin
from typer.testing import CliRunner

import tlkit
from tlkit.extract import cache
from tlkit.extract.cache import CacheIdentity, FeatureStore, open_store, parse_duration
from tlkit.extract.features import extract, extract_cached, prepare_model

TESTS = Path(__file__).resolve().parent


def _paths(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


@pytest.fixture
def model() -> torch.nn.Module:
    return prepare_model(TinyCNN(), torch.device("cpu"))


@pytest.fixture
def store(feature_cache_dir: Path) -> FeatureStore:
    return open_store(TINY_IDENTITY)


def test_second_extraction_comes_from_the_cache_without_reading_an_image(
    image_folder: Path, model: torch.nn.Module, store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _paths(image_folder)
    first = extract_cached(model, paths, TINY_PRE, store, batch_size=4, workers=0)
    assert (first.cached, first.extracted) == (0, len(paths))
    assert torch.equal(first.features, extract(model, paths, TINY_PRE, workers=0).features)

    def no_reading(path: Path) -> str:
        raise AssertionError(f"{path} was read again")

    import tlkit.util.hashing

    monkeypatch.setattr(tlkit.util.hashing, "file_sha256", no_reading)  # unchanged files are known by (size, mtime)
    monkeypatch.setattr(tlkit.util.hashing, "_MEMO", {})  # ... from the cache's own index, not this process's memo
    started = time.perf_counter()
    second = extract_cached(model, paths, TINY_PRE, store, batch_size=4, workers=0)
    assert (second.cached, second.extracted) == (len(paths), 0)
    assert torch.equal(second.features, first.features)
    assert second.kept == first.kept
    assert time.perf_counter() - started < 1.0


def test_changed_bytes_reextract_exactly_that_image_and_new_images_only_themselves(
    image_folder: Path, model: torch.nn.Module, store: FeatureStore
) -> None:
    paths = _paths(image_folder)
    extract_cached(model, paths, TINY_PRE, store, workers=0)
    make_image(paths[3], (10, 250, 10), size=(48, 40), seed=99)  # same path, new content
    for i in range(2):
        paths.append(make_image(image_folder / "train" / "cats" / f"new_{i}.jpg", (200, 40, 40), seed=500 + i))
    again = extract_cached(model, paths, TINY_PRE, store, workers=0)
    assert (again.cached, again.extracted) == (len(paths) - 3, 3)
    assert torch.equal(again.features, extract(model, paths, TINY_PRE, workers=0).features)


def test_moved_and_duplicated_files_are_found_by_content(image_folder: Path, model: torch.nn.Module, store: FeatureStore, tmp_path: Path) -> None:
    paths = _paths(image_folder)
    before = extract_cached(model, paths, TINY_PRE, store, workers=0)
    moved = tmp_path / "elsewhere" / "renamed.jpg"
    moved.parent.mkdir()
    moved.write_bytes(paths[0].read_bytes())
    result = extract_cached(model, [moved, paths[1], moved], TINY_PRE, store, workers=0)
    assert (result.cached, result.extracted) == (3, 0)
    assert torch.equal(result.features[0], before.features[0])


def test_every_input_of_the_features_is_part_of_the_key() -> None:
    base = CacheIdentity(backbone="tiny_cnn", weights_id="ab" * 32, preprocessing=TINY_PRE, precision="fp32", seed=0)
    other_pre = tlkit.Preprocessing(crop_size=32, resize_size=40, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    changes = [
        {"backbone": "other"},
        {"weights_id": "cd" * 32},
        {"preprocessing": other_pre},
        {"precision": "bf16"},
        {"options": {"drop": 0.1}},
        {"background": (255, 255, 255)},
        {"decoder": "fast"},
        {"runtime": "onnxruntime"},
    ]
    for change in changes:
        assert dataclasses.replace(base, **change).key != base.key, change
    # Real weights are identified by their hash, so the seed does not matter; random ones by the seed.
    assert dataclasses.replace(base, seed=1).key == base.key
    random = dataclasses.replace(base, weights_id="random")
    assert random.key != dataclasses.replace(random, seed=1).key


def test_cache_keys_are_those_of_earlier_versions_so_existing_entries_stay_valid() -> None:
    """Digests computed by tlkit before CacheIdentity (from the 8 loose parameters): the same entries are found."""
    pre = tlkit.Preprocessing(crop_size=32, resize_size=40, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    full = CacheIdentity("tiny_cnn", "ab" * 32, pre, "fp32", seed=0, options={"drop": 0.1}, background=(255, 255, 255), decoder="fast", runtime="onnxruntime")
    assert full.key == "27af2a45b7f48b7b219aee55a3dd18c0"
    assert CacheIdentity("tiny_cnn", "random", pre, "fp32", seed=3).key == "1f8ac71c673565b4f87dab74cf34197f"
    assert CacheIdentity("tiny_cnn", "random", pre, "bf16", seed=3, background=(1, 2, 3), decoder="reference").key == "c64c53e096b8a8b1badb4541421af7c8"


@pytest.mark.parametrize("extra", [{}, {"decoder": "fast"}, {"decoder": "reference", "runtime": "openvino", "precision": "int8"}])
def test_the_recorded_part_of_an_identity_rebuilds_it(extra: dict[str, str]) -> None:
    """What model.json keeps as cache_extra, read back onto the rest of the identity, names the same entry."""
    bare = CacheIdentity("tiny_cnn", "ab" * 32, TINY_PRE, "fp32", seed=0, options={"drop": 0.1}, background=(0, 0, 0))
    identity = bare.with_recorded(extra)
    assert identity.recorded() == extra
    assert bare.with_recorded(json.loads(json.dumps(identity.recorded()))) == identity
    assert identity.to_dict()["precision"] == extra.get("precision", "fp32")


def test_broken_and_temporary_files_never_read_as_features(image_folder: Path, model: torch.nn.Module, store: FeatureStore) -> None:
    paths = _paths(image_folder)
    extract_cached(model, paths, TINY_PRE, store, batch_size=4, workers=0, chunk_images=4)
    chunks = store.chunks()
    assert len(chunks) == (len(paths) + 3) // 4
    from safetensors import safe_open

    with safe_open(str(chunks[0]), framework="pt") as fh:
        lost = len(list(fh.keys()))
    # A chunk cut short (as a crash during a non-atomic write would leave) and a leftover temp file.
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])
    (store.path / ".tmp-deadbeef.safetensors").write_bytes(b"partial")
    result = extract_cached(model, paths, TINY_PRE, store, workers=0)
    assert (result.cached, result.extracted) == (len(paths) - lost, lost)
    assert torch.equal(result.features, extract(model, paths, TINY_PRE, workers=0).features)


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    from feature_helpers import TINY_IDENTITY, TINY_PRE, TinyCNN
    from tlkit.extract.cache import open_store
    from tlkit.extract.features import extract_cached, prepare_model

    paths = sorted(Path({folder!r}).rglob("*.jpg"))
    store = open_store(TINY_IDENTITY)
    model = prepare_model(TinyCNN(delay=0.15), torch.device("cpu"))
    extract_cached(model, paths, TINY_PRE, store, batch_size=2, workers=1, chunk_images=4)
    print("finished", flush=True)
    """
)


def test_sigkilled_extraction_resumes_to_identical_features(tmp_path: Path, feature_cache_dir: Path, model: torch.nn.Module) -> None:
    folder = make_image_folder(tmp_path / "data", n_train=8, n_test=4)  # 24 images, 12 slow batches
    paths = _paths(folder)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(TESTS), folder=str(folder)))
    child = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "TLKIT_CACHE_DIR": str(feature_cache_dir)})
    store = open_store(TINY_IDENTITY)
    deadline = time.monotonic() + 60
    while not store.chunks() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    time.sleep(0.2)  # kill it somewhere in the middle of the next chunk
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    done = len(store.lookup(cache.hash_files(paths)))
    assert 4 <= done < len(paths), "the child should have been killed part-way"

    resumed = extract_cached(model, paths, TINY_PRE, store, batch_size=5, workers=0)
    assert resumed.cached == done and resumed.extracted == len(paths) - done
    uninterrupted = extract(model, paths, TINY_PRE, batch_size=3, workers=0)
    assert torch.equal(resumed.features, uninterrupted.features)


def test_two_concurrent_extractions_share_the_cache(tmp_path: Path, feature_cache_dir: Path, model: torch.nn.Module) -> None:
    folder = make_image_folder(tmp_path / "data", n_train=4, n_test=2)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(TESTS), folder=str(folder)).replace("delay=0.15", "delay=0.02"))
    children = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert all(child.wait(timeout=120) == 0 for child in children)
    paths = _paths(folder)
    result = extract_cached(model, paths, TINY_PRE, open_store(TINY_IDENTITY), workers=0)
    assert (result.cached, result.extracted) == (len(paths), 0)
    assert torch.equal(result.features, extract(model, paths, TINY_PRE, workers=0).features)


def test_parse_duration() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("1d12h") == 36 * 3600
    assert parse_duration("90m") == 5400
    assert parse_duration("1.5h") == 5400
    for bad in ("", "10", "3 years", "d", "5x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def _run_recipe(folder: Path, tmp_path: Path, out: str, seed: int = 0, **extract_settings: object) -> dict:
    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run

    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    data = {
        "name": "tiny",
        "seed": seed,
        "dataset": {"root": str(folder)},
        "backbone": {"name": "tiny_cnn", "weights": "none"},
        "extract": {"workers": 0, **extract_settings},
        "head": {"epochs": 5, "eval_every": 5},
    }
    notes: list[str] = []

    class Notes(Observer):
        def note(self, text: str) -> None:
            notes.append(text)

    result = run(resolve(data, plugins), tmp_path / out, Notes())
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    return {"notes": notes, "metrics": metrics}


def test_a_run_reports_and_records_cached_and_extracted_counts(image_folder: Path, tmp_path: Path, feature_cache_dir: Path) -> None:
    first = _run_recipe(image_folder, tmp_path, "one")
    assert "features: 0 cached, 18 extracted" in first["notes"]
    assert first["metrics"]["features"]["cached"] == 0 and first["metrics"]["features"]["extracted"] == 18
    second = _run_recipe(image_folder, tmp_path, "two")
    assert "features: 18 cached, 0 extracted" in second["notes"]
    assert second["metrics"]["features"]["cached"] == 18
    assert second["metrics"]["test_accuracy"] == first["metrics"]["test_accuracy"]
    # Another seed draws other random weights: nothing may be reused.
    third = _run_recipe(image_folder, tmp_path, "three", seed=1)
    assert third["metrics"]["features"]["extracted"] == 18


def test_cache_false_neither_reads_nor_writes(image_folder: Path, tmp_path: Path, feature_cache_dir: Path) -> None:
    result = _run_recipe(image_folder, tmp_path, "off", cache=False)
    assert "features: 0 cached, 18 extracted (cache off)" in result["notes"]
    features = result["metrics"]["features"]
    assert {k: features[k] for k in ("cached", "extracted", "cache")} == {"cached": 0, "extracted": 18, "cache": None}
    assert not (feature_cache_dir / "features").exists()


def test_cache_commands(image_folder: Path, model: torch.nn.Module, store: FeatureStore, feature_cache_dir: Path) -> None:
    from tlkit.cli.app import app

    extract_cached(model, _paths(image_folder), TINY_PRE, store, workers=0)
    runner = CliRunner()
    listed = runner.invoke(app, ["cache", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["backbone"], r["features"], r["precision"]) for r in rows] == [("tiny_cnn", 18, "fp32")]
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and str(feature_cache_dir) in info.output and "18" in info.output

    kept = runner.invoke(app, ["cache", "clear", "--older-than", "1d"])
    assert kept.exit_code == 0 and "removed 0" in kept.output
    os.utime(store.path / cache.META, (time.time() - 3 * 86400,) * 2)
    cleared = runner.invoke(app, ["cache", "clear", "--older-than", "2d"])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output
    assert cache.list_entries() == []



def _stored_model(root: Path, backbone: str = "tiny_cnn") -> Path:
    """A converted-model entry (a stand-in file, as the store keeps it) and a listing index beside the features."""
    from tlkit.extract.runtimes.conversion import ModelStore, model_key

    identity = {"backbone": backbone, "weights_sha256": "0" * 64, "runtime": "onnxruntime", "precision": "fp32"}

    def build(folder: Path) -> tuple[Path, dict[str, object]]:
        (folder / "model.onnx").write_bytes(b"x" * 5000)
        return folder / "model.onnx", {"agreement": 1.0}

    stored = ModelStore(root).save(model_key(identity), build, {"identity": identity})
    (root / "catalog").mkdir(exist_ok=True)
    (root / "catalog" / "listings-0.json").write_text("{}" * 1000)
    return stored.folder


def test_cache_info_and_clear_cover_every_store(image_folder: Path, model: torch.nn.Module, store: FeatureStore, feature_cache_dir: Path) -> None:
    from tlkit.cli.app import app

    extract_cached(model, _paths(image_folder), TINY_PRE, store, workers=0)
    folder = _stored_model(feature_cache_dir)
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["stores"]["converted_models"]["entries"] == 1 and data["stores"]["converted_models"]["bytes"] >= 5000
    assert data["stores"]["listing_index"]["bytes"] >= 2000 and data["bytes"] >= 7000 + data["stores"]["features"]["bytes"]
    text = runner.invoke(app, ["cache", "info"]).output
    assert "converted models" in text and "listing index" in text
    os.utime(folder, (time.time() - 3 * 86400,) * 2)  # unused for 3 days: --older-than reaches converted models too
    older = runner.invoke(app, ["cache", "clear", "--older-than", "2d"])
    assert older.exit_code == 0 and "removed 1 cache entry" in older.output and "converted model" in older.output
    assert not folder.exists() and len(cache.list_entries()) == 1
    _stored_model(feature_cache_dir)
    everything = runner.invoke(app, ["cache", "clear"])
    assert everything.exit_code == 0 and "removed 2 cache entries" in everything.output, everything.output
    assert not (feature_cache_dir / "runtimes").exists() or not any((feature_cache_dir / "runtimes").iterdir())
    assert not (feature_cache_dir / "catalog").exists()


def test_cache_clear_refuses_while_a_run_holds_the_cache(
    feature_cache_dir: Path, store: FeatureStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlkit.cli.app import main
    from tlkit.util.cache_lock import held

    store.write({"a" * 64: torch.ones(16)})
    with held(feature_cache_dir):
        with pytest.raises(SystemExit) as exit_info:
            main(["cache", "clear"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"in use by a run (pid {os.getpid()})" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert store.lookup(["a" * 64])  # nothing was removed
    stale = feature_cache_dir / "locks" / "run-999999999-dead.lock"
    stale.write_text("999999999\n")  # left by a run killed with -9: no process holds its lock
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "clear"])
    assert exit_info.value.code in (0, None) and "removed 1 cache entry" in capsys.readouterr().out
    assert not stale.exists()


def test_a_run_holds_the_cache_for_its_duration(image_folder: Path, tmp_path: Path, feature_cache_dir: Path) -> None:
    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run
    from tlkit.util.cache_lock import holders

    seen: list[list[int]] = []

    class Watch(Observer):
        def note(self, text: str) -> None:
            seen.append(holders(feature_cache_dir))

    recipe = {"name": "held", "dataset": {"root": str(image_folder)}, "backbone": {"name": "tiny_cnn", "weights": "none"},
              "extract": {"workers": 0}, "head": {"epochs": 5, "eval_every": 5}}
    run(resolve(recipe, load_plugins(entry_points=False, extra=[TinyPlugin()])), tmp_path / "run", Watch())
    assert seen and all(pids == [os.getpid()] for pids in seen)
    assert holders(feature_cache_dir) == [] and list((feature_cache_dir / "locks").iterdir()) == []


def test_cache_clear_rejects_a_bad_duration_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tlkit.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "clear", "--older-than", "soon"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--older-than: 'soon' is not a duration" in err and "Traceback" not in err


@pytest.mark.slow
def test_lite0_recipe_second_run_extracts_nothing_and_one_changed_image_once(hymenoptera: Path, tmp_path: Path) -> None:
    """The real ants/bees recipe on Lite0: 397 features once, then all from the cache in under a second."""
    import shutil

    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.engine import run

    data = tmp_path / "hymenoptera_data"
    shutil.copytree(hymenoptera, data)  # a copy we may edit; features are found by content, not path
    overrides = ["backbone.name=efficientnet_lite0", f"dataset.root={data}", "head.epochs=50", "head.eval_every=50"]
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "hymenoptera.yaml", load_plugins(entry_points=False), overrides)
    first = run(recipe, tmp_path / "first", Observer()).metrics.to_dict()
    assert first["features"]["cached"] + first["features"]["extracted"] == 397

    second = run(recipe, tmp_path / "second", Observer()).metrics.to_dict()
    assert (second["features"]["cached"], second["features"]["extracted"]) == (397, 0)
    assert second["timings_s"]["extract"] < 1.0
    assert second["test_accuracy"] == first["test_accuracy"]

    victim = sorted((data / "val" / "bees").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # same picture, different bytes
    third = run(recipe, tmp_path / "third", Observer()).metrics.to_dict()
    assert (third["features"]["cached"], third["features"]["extracted"]) == (396, 1)


def test_one_hash_memo_serves_weights_and_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file hashed once in a process (as weights or as an image) is not read again while unchanged."""
    import tlkit.util.hashing
    from tlkit.sources.weights import sha256_file

    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 1000)
    reads: list[str] = []
    real = tlkit.util.hashing.file_sha256
    monkeypatch.setattr(tlkit.util.hashing, "file_sha256", lambda p: reads.append(str(p)) or real(p))
    first = sha256_file(path)
    assert cache.FileHashes(tmp_path / "cache").sha256(path) == first and len(reads) == 1
    path.write_bytes(b"y" * 1000)  # same size, new content: the stamp changes, so it is read again
    assert sha256_file(path) != first and len(reads) == 2
