"""The run directory under stress: unwritable or full output, killed runs, and concurrent runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlkit.errors import OutputError
from tlkit.saved.run_directory import INCOMPLETE, MARKER, RunDirectory


def test_staging_folder_is_marked_incomplete_until_commit(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path / "run")
    assert run_dir.path.name.startswith("run.partial-") and (run_dir.path / INCOMPLETE).is_file()
    run_dir.write_json("metrics.json", {"a": 1})
    final = run_dir.commit({"complete": True})
    assert final == tmp_path / "run" and (final / MARKER).is_file() and not (final / INCOMPLETE).exists()
    assert list(tmp_path.iterdir()) == [final]


def test_discard_leaves_nothing(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path / "run")
    run_dir.write_json("metrics.json", {})
    run_dir.discard()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_an_error_before_work_starts(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the run directory's folder"):
        RunDirectory(tmp_path / "a-file" / "run")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a tlkit run"):
        RunDirectory(tmp_path / "taken")


def test_too_little_free_space_is_an_error_before_work_starts(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="MiB free"):
        RunDirectory(tmp_path / "run", min_free=2**62)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("kind", ["json", "tensors"])
def test_a_full_disk_during_writes_is_a_clean_error(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/full answers every write with ENOSPC, exactly as a full disk does."""
    import tlkit.util.atomic

    run_dir = RunDirectory(tmp_path / "run")
    name = "metrics.json" if kind == "json" else "head.safetensors"
    full = run_dir.path / f".tmp-full-{name}"
    full.symlink_to("/dev/full")  # the atomic writer's temporary file is this link, so its writes fail as on a full disk
    monkeypatch.setattr(tlkit.util.atomic, "temporary_name", lambda target: full)
    with pytest.raises(OutputError, match="free some disk space"):
        if kind == "json":
            run_dir.write_json(name, {"x": list(range(10_000))})
        else:
            run_dir.write_tensors(name, {"w": torch.zeros(100_000)})
    assert not (run_dir.path / name).exists()


def test_cli_reports_unwritable_out_in_one_line(tmp_path: Path, image_folder: Path, plugins: object, capsys: pytest.CaptureFixture[str]) -> None:
    from tlkit.cli.app import main

    (tmp_path / "a-file").write_text("x")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: {{root: {image_folder}}}\nbackbone: {{name: 'timm:test_resnet', weights: none}}\n")
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--out", str(tmp_path / "a-file" / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and "choose another --out" in err
    assert "extracting" not in err  # refused before any work


def test_runs_committing_to_the_same_default_name_do_not_overwrite_each_other(tmp_path: Path) -> None:
    first, second = RunDirectory(tmp_path / "r-20260101-000000", unique=True), RunDirectory(tmp_path / "r-20260101-000000", unique=True)
    first.write_json("who.json", 1)
    second.write_json("who.json", 2)
    a, b = first.commit({}), second.commit({})
    assert a != b and {a.name, b.name} == {"r-20260101-000000", "r-20260101-000000-2"}
    assert json.loads((a / "who.json").read_text()) == 1 and json.loads((b / "who.json").read_text()) == 2


def test_two_runs_on_the_same_data_at_the_same_time_both_succeed(tmp_path: Path, image_folder: Path, feature_cache_dir: Path) -> None:
    recipe = tmp_path / "twin.yaml"
    recipe.write_text(
        f"name: twin\ndataset: {{root: {image_folder}}}\nbackbone: {{name: 'timm:test_resnet', weights: none}}\n"
        "extract: {batch_size: 4, workers: 1, device: cpu}\nhead: {epochs: 50, eval_every: 25}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLKIT_LOAD_PLUGINS": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tlkit", "run", str(recipe)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((r / MARKER).is_file() for r in runs), runs
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"]
    # Both runs wrote into one shared feature cache: only complete chunks, and together they hold every image.
    (entry,) = [p for p in (feature_cache_dir / "features").iterdir() if p.is_dir()]  # one extractor, one entry
    assert not [p for p in feature_cache_dir.rglob("*") if p.name.startswith(".") and p.suffix != ".json"]
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.engine import run

    third = run(load_recipe(recipe, load_plugins(entry_points=False)), tmp_path / "third")
    assert third.metrics.features["extracted"] == 0 and third.metrics.features["cached"] == 18
    assert Path(third.metrics.features["cache"]) == entry
    assert third.metrics.test_accuracy == metrics[0]["test_accuracy"]
