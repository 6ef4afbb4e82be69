"""The CLI end to end on small generated data: run, listings, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_recipe
from safetensors.torch import load_file

from tlkit.cli.app import main


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def test_run_writes_a_complete_run_directory(tiny_plugins, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    out = tmp_path / "out"
    assert cli("run", str(recipe), "--out", str(out), "--set", "head.epochs=40") == 0
    captured = capsys.readouterr()
    assert "train: 12 x 3 x 32 x 32" in captured.err and "classes: cats, dogs" in captured.err
    assert "test accuracy" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["train_accuracy"] <= 1.0
    assert metrics["counts"] == {"train": 12, "test": 6}
    assert set(metrics["timings_s"]) >= {"extract", "train_head", "total"}
    assert len(metrics["history"]) == 4
    resolved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert resolved["head"]["epochs"] == 40 and resolved["backbone"]["name"] == "tiny_cnn"
    assert json.loads((out / "classes.json").read_text()) == ["cats", "dogs"]
    head = load_file(str(out / "head.safetensors"))
    assert head["weight"].shape == (2, 8)
    model = json.loads((out / "model.json").read_text())
    assert model["format_version"] == 2 and model["backbone"]["name"] == "tiny_cnn" and model["pipeline"]["preprocessing"]["crop_size"] == 32
    assert not list(tmp_path.glob("out.partial-*"))


def test_run_is_reproducible(tiny_plugins, image_folder, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    for name in ("a", "b"):
        assert cli("run", str(recipe), "--out", str(tmp_path / name)) == 0
    a, b = (load_file(str(tmp_path / n / "head.safetensors")) for n in ("a", "b"))
    assert all((a[k] == b[k]).all() for k in a)


def test_rerun_into_the_same_out_replaces_the_previous_run(tiny_plugins, image_folder, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    out = tmp_path / "out"
    assert cli("run", str(recipe), "--out", str(out), "--set", "head.epochs=10") == 0
    assert cli("run", str(recipe), "--out", str(out), "--set", "head.epochs=20") == 0
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["epoch"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out", "r.yaml"]


def test_out_that_is_not_a_run_is_refused_before_work(tiny_plugins, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert cli("run", str(recipe), "--out", str(out)) == 2
    assert "not a tlkit run" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["backbone.name=tiny_cnm"], "did you mean 'tiny_cnn'"),
        (["head.epochs=-3"], "'head.epochs'"),
        (["dataset.root=/no/such/folder"], "/no/such/folder"),
        (["backbone.weights=/no/such/weights.pth"], "/no/such/weights.pth"),
    ],
)
def test_errors_are_one_line_exit_2(tiny_plugins, image_folder, tmp_path, capsys, overrides, expected):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    args = ["run", str(recipe), "--out", str(tmp_path / "o")]
    for item in overrides:
        args += ["--set", item]
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or all(not line.startswith("  File") for line in err.splitlines())
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o.partial-*"))


def test_debug_shows_the_traceback(tiny_plugins, image_folder, tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    monkeypatch.chdir(tmp_path)  # the default run folder, runs/, is relative to the working directory
    assert cli("--debug", "run", str(recipe), "--set", "dataset.root=/no/such") == 2
    assert "Traceback" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # a failed run leaves no folder behind, not even runs/


def test_backbones_listing(tiny_plugins, capsys):
    assert cli("backbones", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet18"]["feature_dim"] == 512 and rows["efficientnet_lite0"]["weights_offline"] is True
    assert rows["tiny_cnn"]["plugin"] == "tests-tiny"
    assert "torchvision:resnet50" in rows and not any(n.startswith("timm:") for n in rows)
    assert cli("backbones", "timm:resnet1*", "--json") == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert "timm:resnet18" in names and names == sorted(names)
    assert cli("backbones") == 0
    table = capsys.readouterr().out
    assert "efficientnet_lite0" in table and "timm:*" in table


def test_datasets_and_heads_listing(tiny_plugins, capsys):
    assert cli("datasets", "--json") == 0
    listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert sorted(listed) == ["csv", "hf_datasets", "imagefolder", "webdataset"]
    imagefolder = listed["imagefolder"]
    assert {o["name"]: o["default"] for o in imagefolder["options"]}["test"] == "val"
    assert cli("heads") == 0
    assert "epochs: int = 1000  full-batch SGD steps" in capsys.readouterr().out


def test_installed_command_and_python_m(tmp_path):
    env = {**os.environ, "TLKIT_LOAD_PLUGINS": ""}
    result = subprocess.run([sys.executable, "-m", "tlkit", "heads", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["name"] == "linear" or "linear" in result.stdout
    tlkit_bin = Path(sys.executable).with_name("tlkit")
    result = subprocess.run([str(tlkit_bin), "run", str(tmp_path / "missing.yaml")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "missing.yaml" in result.stderr
