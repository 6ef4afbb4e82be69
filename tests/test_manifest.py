"""``model.json`` as :class:`RunManifest`: a run directory written by tlkit 0.1.0 (``tests/data/run-0.1.0``,
kept exactly as that version wrote it) still loads, predicts its own ``predictions.csv`` and works with
``tlkit predict``; its manifest migrates to what this tlkit writes for the same recipe; a damaged
manifest is one line naming the file and the key; every field is documented in ``docs/run-directory.md``."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tlkit
from tlkit.contract.plugin_manager import Plugins
from tlkit.errors import RunError
from tlkit.saved import manifest
from tlkit.saved.manifest import FORMAT_VERSION, RunManifest, migrate, parse

OLD = Path(__file__).resolve().parent / "data" / "run-0.1.0"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "run-directory.md"
FREE_FORM = {"backbone.options", "head.options", "head.choices", "features.cache_extra"}  # the plugin's keys, not tlkit's


@pytest.fixture
def in_old_run(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory that the 0.1.0 run's relative image paths start from."""
    monkeypatch.chdir(OLD)
    return OLD


def recorded(run_dir: Path) -> dict[str, tuple[str, float]]:
    with (run_dir / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        return {row["path"]: (row["predicted_class"], float(row["confidence"])) for row in csv.DictReader(fh)}


def test_the_stored_run_is_format_1_as_0_1_0_wrote_it() -> None:
    raw = json.loads((OLD / "run" / "model.json").read_text())
    assert "format_version" not in raw and raw["tlkit_version"] == "0.1.0" and raw["backbone"] == "tiny_cnn"


def test_a_0_1_0_run_loads_and_predicts_its_own_predictions_csv(tiny_plugins: Plugins, in_old_run: Path) -> None:
    model = tlkit.load("run")
    expected = recorded(Path("run"))
    assert len(expected) == 4 and model.classes == ["cats", "dogs"]
    for prediction in model.predict(list(expected)):
        label, confidence = expected[prediction.source]
        assert prediction.label == label
        assert prediction.probability == pytest.approx(confidence, abs=2e-6)
    assert model.saved.manifest.format_version == FORMAT_VERSION and model.saved.manifest.backbone.in_run


def test_tlkit_predict_works_on_a_0_1_0_run(tiny_plugins: Plugins, in_old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tlkit.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(["predict", "run", "images/val", "--json", "--device", "cpu"])
    assert info.value.code in (0, None)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    expected = recorded(Path("run"))
    assert {line["path"] for line in lines} == set(expected)
    for line in lines:
        assert (line["class"], line["probability"]) == (expected[line["path"]][0], pytest.approx(expected[line["path"]][1], abs=2e-6))


def test_the_migration_yields_the_manifest_this_tlkit_writes_for_the_same_recipe(tiny_plugins: Plugins, in_old_run: Path, tmp_path: Path) -> None:
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.engine import run

    migrated = manifest.read(OLD / "run" / "model.json")
    raw = json.loads((OLD / "run" / "model.json").read_text())
    assert migrated == parse(migrate(raw, 1), OLD / "run" / "model.json")
    recipe = load_recipe(OLD / "run" / "recipe.yaml", tiny_plugins)  # a 0.1.0 recipe still loads
    current = manifest.read(run(recipe, tmp_path / "again").out_dir / "model.json")
    assert current.format_version == migrated.format_version == FORMAT_VERSION
    # one difference, on purpose: 0.3.0's linear head has a new option, standardize (default true); the
    # 0.1.0 run trained on raw features and its manifest (rightly) does not claim otherwise
    assert current.head.options == {**migrated.head.options, "standardize": True}
    same_head = dataclasses.replace(current.head, options=migrated.head.options)
    assert dataclasses.replace(migrated, tlkit_version=current.tlkit_version) == dataclasses.replace(current, head=same_head)


def test_a_manifest_survives_its_own_round_trip(tiny_plugins: Plugins, tmp_path: Path) -> None:
    saved = manifest.read(OLD / "run" / "model.json")
    path = tmp_path / "model.json"
    path.write_text(saved.to_json())
    assert manifest.read(path) == saved and json.loads(path.read_text())["format_version"] == FORMAT_VERSION


def test_the_earliest_format_1_files_migrate_with_what_their_readers_assumed() -> None:
    """Runs of the first 0.1 builds had no pipeline, no backbone_in_run, no extract, no cache_extra, no head_choices."""
    raw = json.loads((OLD / "run" / "model.json").read_text())
    for key in ("pipeline", "backbone_in_run", "extract", "cache_extra", "head_choices", "backbone_weights_file"):
        raw.pop(key)
    old = parse(migrate(raw, 1), Path("model.json"))
    assert old.backbone.in_run  # random weights always travelled with the run
    assert (old.pipeline.decoder, old.pipeline.precision, old.pipeline.background) == ("reference", "fp32", (255, 255, 255))
    assert old.pipeline.preprocessing.crop_size == 32 and old.features.batch_size == 32
    assert old.head.choices == {} and old.features.cache_extra == {}


def _current() -> dict[str, Any]:
    return manifest.read(OLD / "run" / "model.json").to_dict()


def _set(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, key = dotted.split(".")
        for parent in parents:
            data = data[parent]
        if value is _DROP:
            del data[key]
        else:
            data[key] = value

    return change


_DROP = object()
BAD = {
    "backbone.name": _set("backbone.name", 3),
    "backbone.weights_sha256": _set("backbone.weights_sha256", _DROP),
    "backbone.in_run": _set("backbone.in_run", "yes"),
    "backbone.options": _set("backbone.options", ["a"]),
    "features.dim": _set("features.dim", "8"),
    "features.batch_size": _set("features.batch_size", 0),
    "features.cache_extra": _set("features.cache_extra", {"runtime": 1}),
    "classes": _set("classes", []),
    "head": _set("head", None),
    "pipeline.preprocessing": _set("pipeline.preprocessing", _DROP),
    "pipeline": _set("pipeline.on_bad_image", "ignore"),
    "format_version": _set("format_version", "2"),
}


@pytest.mark.parametrize("key", sorted(BAD))
def test_a_wrong_value_is_one_line_naming_the_file_and_the_key(key: str, tmp_path: Path) -> None:
    data = _current()
    BAD[key](data)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RunError) as info:
        manifest.read(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and f"'{key}'" in message and "run the recipe again" in message


@pytest.mark.parametrize(
    "content",
    [b"[1, 2]", b'{"format_version": 2, ', b'{"format_version": NaN}', b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000],
    ids=["a list", "cut", "NaN", "not utf-8", "nested too deep"],
)
def test_a_file_that_is_not_a_json_object_is_one_line(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(content)
    with pytest.raises(RunError, match="run the recipe again") as info:
        manifest.read(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(b" " * (manifest.MAX_BYTES + 1))
    with pytest.raises(RunError, match="MiB, over the 4 MiB bound"):
        manifest.read(path)


def test_a_manifest_from_a_newer_tlkit_says_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**_current(), "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(RunError, match=f"format {FORMAT_VERSION + 1}, written by a newer tlkit.*upgrade tlkit"):
        manifest.read(path)


def test_a_run_refuses_a_damaged_manifest_in_one_line(tiny_plugins: Plugins, tmp_path: Path) -> None:
    """A hand-edited model.json (the checksum in run.json dropped with it) is refused by tlkit.load too."""
    run_dir = Path(shutil.copytree(OLD / "run", tmp_path / "run"))
    marker = json.loads((run_dir / "run.json").read_text())
    del marker["files"]["model.json"]
    (run_dir / "run.json").write_text(json.dumps(marker))
    data = json.loads((run_dir / "model.json").read_text())
    (run_dir / "model.json").write_text(json.dumps({**data, "feature_dim": "eight"}))
    with pytest.raises(RunError, match=r"model.json: 'features.dim' must be a whole number >= 1"):
        tlkit.load(run_dir)


def _keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of a manifest as a dotted path, not descending into the plugins' own objects."""
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, dict) and dotted not in FREE_FORM:
            keys.extend(_keys(value, f"{dotted}."))
    return keys


def _documented_keys(text: str) -> set[str]:
    """The keys in the first column of the tables of the ``model.json`` section (up to the next ``##`` heading)."""
    section = text.split("\n## `model.json`", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", section, flags=re.MULTILINE))


def _every_key() -> set[str]:
    """The keys of the fixture's manifest, with a preprocessing that writes its optional keys too (timm's, squashed)."""
    from tlkit.contract.preprocessing import Preprocessing

    saved = manifest.read(OLD / "run" / "model.json")
    timm = Preprocessing(crop_size=32, resize_size=35, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3, pipeline="timm", crop_mode="squash", crop_pct=0.9)
    full = dataclasses.replace(saved, pipeline=dataclasses.replace(saved.pipeline, preprocessing=timm))
    return set(_keys(_current())) | set(_keys(full.to_dict()))


def test_every_manifest_field_is_documented() -> None:
    keys = _every_key()
    assert {f.name for f in dataclasses.fields(RunManifest)} <= keys
    documented = _documented_keys(DOCS.read_text(encoding="utf-8"))
    assert not keys - documented, f"fields of model.json missing from {DOCS.name}: {sorted(keys - documented)}"
    assert not documented - keys, f"{DOCS.name} documents fields model.json does not have: {sorted(documented - keys)}"
