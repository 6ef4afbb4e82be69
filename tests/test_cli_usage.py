"""Usage errors of every command are one line and exit 2; help shows flags as flags; listings and predict edge cases."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from conftest import make_image
from tiny_runs import make_data, make_run, make_weights

from tlkit import __version__
from tlkit.cli.app import app, main
from tlkit.contract.plugin_manager import load_plugins


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def _commands() -> list[tuple[str, ...]]:
    """Every command path of the app, e.g. ``("run",)`` and ``("cache", "list")``."""
    paths: list[tuple[str, ...]] = []

    def walk(command: typer.core.TyperGroup | typer.core.TyperCommand, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        else:
            paths.append(path)

    walk(typer.main.get_command(app), ())
    return paths


COMMANDS = _commands()


def test_the_command_tree_is_what_these_tests_walk() -> None:
    assert {("run",), ("predict",), ("backbones",), ("cache", "list"), ("cache", "clear")} <= set(COMMANDS)


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_an_unknown_option_of_every_command_is_one_line_exit_2(path: tuple[str, ...], capsys) -> None:
    assert cli(*path, "--no-such-option") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--no-such-option" in line and f"tlkit {' '.join(path)} --help" in line


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_of_every_command_shows_flags_as_flags(path: tuple[str, ...], capsys) -> None:
    for flag in ("--help", "-h"):
        assert cli(*path, flag) == 0
        text = capsys.readouterr().out
        assert "Usage: tlkit " + " ".join(path) in text
        for tag in ("<bool>", "<list[", "<str>", "<path>", "<int", "None"):
            assert tag not in text, f"{' '.join(path)} {flag} shows {tag!r}:\n{text}"


def test_flags_and_repeatable_set_read_as_a_person_writes_them(capsys) -> None:
    assert cli("run", "--help") == 0
    assert "--set KEY=VALUE" in capsys.readouterr().out
    assert cli("predict", "--help") == 0
    text = capsys.readouterr().out
    assert "--json " in text and "--csv FILE" in text and "--top-k K" in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("run",), "missing argument 'RECIPE'"),
        (("predict",), "missing argument 'RUN_DIR'"),
        (("predict", "somewhere"), "missing argument 'IMAGES'"),
        (("export",), "missing argument 'RUN_DIR'"),
        (("predict", "--top-k", "0", "r", "i.jpg"), "--top-k"),
        (("predict", "--top-k", "many", "r", "i.jpg"), "--top-k"),
        (("rnu",), "did you mean 'run'?"),
        (("nosuch",), "no such command 'nosuch'"),
        (("cache", "lst"), "did you mean 'list'?"),
        (("cache", "list", "--jsn"), "did you mean --json?"),
        (("cache", "clear", "--older-than", "3 months"), "'3 months' is not a duration"),
        (("cache", "clear", "--older-than"), "--older-than"),
        (("backbones", "a", "b"), "unexpected extra argument"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...], expected: str, capsys) -> None:
    assert cli(*args) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("args", [(), ("cache",)], ids=["tlkit", "tlkit cache"])
def test_a_group_alone_shows_its_commands_and_exits_2(args: tuple[str, ...], capsys) -> None:
    assert cli(*args) == 2
    captured = capsys.readouterr()
    assert "Commands:" in captured.out and "Traceback" not in captured.err + captured.out


def test_version(capsys) -> None:
    assert cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"tlkit {__version__}"


def test_installed_command_answers_help_and_version_without_torch(tmp_path: Path) -> None:
    """The real executable: exit codes, and --help/--version never import torch (what makes them fast)."""
    env = {**os.environ, "TLKIT_LOAD_PLUGINS": ""}
    tlkit_bin = Path(sys.executable).with_name("tlkit")
    version = subprocess.run([str(tlkit_bin), "--version"], capture_output=True, text=True, env=env, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"tlkit {__version__}"
    bare = subprocess.run([str(tlkit_bin)], capture_output=True, text=True, env=env, timeout=120)
    assert bare.returncode == 2 and "Commands:" in bare.stdout and "Traceback" not in bare.stderr
    probe = "import sys; from tlkit.cli.app import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)"
    for args in (["--help"], ["--version"], ["run", "--help"]):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env, timeout=120)
        assert result.stderr.strip() == "False", (args, result.stderr)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("backbones", "resnet81"), "unknown backbone 'resnet81'; did you mean 'resnet18'"),
        (("backbones", "restnet*"), "no backbone matches 'restnet*'; did you mean"),
        (("datasets", "imagefolders"), "did you mean 'imagefolder'"),
        (("heads", "logrge"), "did you mean 'logreg'"),
        (("heads", "zz*"), "no head matches 'zz*'"),
    ],
)
def test_listings_with_no_match_are_one_line_exit_2(plugins, args: tuple[str, ...], expected: str, capsys) -> None:
    assert cli(*args) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_listings_spell_defaults_and_types_as_yaml(plugins, capsys) -> None:
    assert cli("heads", "knn") == 0
    text = capsys.readouterr().out
    assert "k: int | null = null" in text and "center: bool = true" in text and "None" not in text


def test_backbones_show_what_people_choose_by(plugins, capsys) -> None:
    assert cli("backbones", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    resnet = rows["resnet18"]
    assert (resnet["input_size"], resnet["num_params"], resnet["pretrained_tag"]) == (224, 11689512, "IMAGENET1K_V1")
    assert cli("backbones", "timm:resnet50", "--json") == 0
    (timm_row,) = json.loads(capsys.readouterr().out)
    assert (timm_row["input_size"], timm_row["pretrained_tag"], timm_row["license"]) == (224, "a1_in1k", "apache-2.0")
    assert cli("backbones", "timm:resnet50") == 0
    table = capsys.readouterr().out
    assert "a1_in1k" in table and "apache-2.0" in table and "licence" in table


def test_cuda_without_a_gpu_is_one_line(tiny_plugins, image_folder: Path, tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    assert cli("run", str(recipe), "--out", str(tmp_path / "o"), "--set", "extract.device=cuda") == 2
    assert "no CUDA GPU" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("usage_run")
    root = make_data(base / "data")
    weights = make_weights(base / "w.pth")
    return root, make_run(load_plugins(entry_points=False), root, base / "run", str(weights), head="centroid")


def test_predict_device_cuda_without_a_gpu_is_one_line(plugins, tiny_run: tuple[Path, Path], capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    root, run_dir = tiny_run
    assert cli("predict", str(run_dir), str(root / "val"), "--device", "cuda") == 2
    assert "no CUDA GPU" in _one_error_line(capsys.readouterr().err)


def test_predict_exits_2_when_nothing_could_be_classified(plugins, tiny_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    _, run_dir = tiny_run
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    assert cli("predict", str(run_dir), str(broken)) == 2
    err = capsys.readouterr().err
    assert "skipped" in err and "none of the 1 image file could be classified" in err and "Traceback" not in err


def test_predict_csv_holds_every_file_and_matches_json(plugins, tiny_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, run_dir = tiny_run
    broken = root.parent / "extra" / "broken.jpg"
    broken.parent.mkdir(exist_ok=True)
    broken.write_bytes(b"junk")
    make_image(broken.parent / "ok.png", (200, 30, 30))
    out = tmp_path / "predictions.csv"
    assert cli("predict", str(run_dir), str(root / "val"), str(broken.parent), "--json", "--top-k", "2", "--csv", str(out)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [line["path"] for line in lines]
    good = [(r, line) for r, line in zip(rows, lines) if "error" not in line]
    assert len(good) == len(list((root / "val").rglob("*.jpg"))) + 1
    assert all(r["class"] == line["class"] and abs(float(r["probability"]) - line["probability"]) < 1e-6 for r, line in good)
    assert all(len(r["top_k"].split("; ")) == 2 for r, _ in good)
    (bad,) = [r for r in rows if r["error"]]
    assert bad["path"] == str(broken) and bad["class"] == ""


def test_quick_start_offline_names_the_offline_way_and_leaves_no_data_folder(plugins, tmp_path: Path, monkeypatch, capsys) -> None:
    """The README's first command on a machine without network: one line that says how to run offline."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "hymenoptera.yaml"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no ResNet-18 weights cached here
    assert cli("run", str(recipe)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "resnet18" in line and "--set backbone.name=efficientnet_lite0 --set dataset.root=DIR" in line
    assert cli("run", str(recipe), "--set", "backbone.name=efficientnet_lite0") == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")][0]
    assert "hymenoptera_data.zip could not be fetched" in line and "--set dataset.root=DIR" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_summary_and_cache_tables_have_no_empty_header_and_wide_shows_the_full_hash(tiny_plugins, image_folder: Path, tmp_path: Path, capsys) -> None:
    import re

    from conftest import write_recipe

    from tlkit.extract import cache

    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    assert cli("run", str(recipe), "--out", str(tmp_path / "o")) == 0
    assert cli("cache", "info") == 0
    text = capsys.readouterr().out
    assert "summary" in text and "test accuracy" in text and "entries" in text
    assert not re.search(r"^\s*┃(\s*┃)+\s*$", text, re.M), text  # a header row of empty cells
    (entry,) = cache.list_entries()  # keys and weights hashes are cut the same way; the key is long here
    assert len(entry.key) > 12
    assert cli("cache", "list") == 0
    short = capsys.readouterr().out
    assert entry.key[:12] in short and entry.key not in short
    assert cli("cache", "list", "--wide") == 0
    assert entry.key in capsys.readouterr().out
