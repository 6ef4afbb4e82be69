"""Hostile and unlucky inputs to the audit: exclusions files that escape the data root, are binary, huge,
missing or a FIFO; bad ``audit:`` keys; an image header that claims a giant size; a tampered ``predictions.csv``.

Each test first checks that the bad case is real (the file really is binary, the header really claims
10 gigapixels), then that tlkit answers with one line (exit 2) or the right result.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_recipe
from PIL import Image

from tlkit.audit import exclusions
from tlkit.audit.findings import AuditInputs, SplitData
from tlkit.audit.sizes import find_image_sizes, header_size
from tlkit.cli.app import main


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def run_with_exclusions(recipe: Path, file: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code and stderr (the notes before the failure, and the error line: one, no traceback)."""
    code = cli("run", str(recipe), "--out", str(out), "--set", f"dataset.exclude={file}")
    err = capsys.readouterr().err.strip()
    assert code == 0 or (len([line for line in err.splitlines() if line.startswith("error:")]) == 1 and "Traceback" not in err)
    return code, err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"train/cats/cats_0.jpg\n../elsewhere/x.jpg\n", "line 2: '../elsewhere/x.jpg' is outside the data root"),
        (b"/etc/passwd\n", "line 1: '/etc/passwd' is outside the data root"),
        (b"train/cats/../../../x.jpg\n", "is outside the data root"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is binary (a NUL byte at 8)"),
        (b"train/cats/caf\xe9.jpg\n", "is not UTF-8 text (byte 14)"),
    ],
    ids=["dotdot", "absolute", "dotdot-inside", "binary", "latin1"],
)
def test_a_bad_exclusions_file_is_one_line_and_nothing_runs(tiny_plugins, image_folder, tmp_path, capsys, content, expected):
    file = tmp_path / "exclude.txt"
    file.write_bytes(content)
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    code, err = run_with_exclusions(recipe, file, tmp_path / "run", capsys)
    assert code == 2 and expected in err and f"dataset.exclude: {file}" in err
    assert not (tmp_path / "run").exists()


def test_a_missing_exclusions_file_says_how_to_make_one(tiny_plugins, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    code, err = run_with_exclusions(recipe, tmp_path / "nope.txt", tmp_path / "run", capsys)
    assert code == 2 and "does not exist; write one with tlkit audit RECIPE --write-exclusions" in err


def test_a_huge_exclusions_file_and_a_fifo_are_refused_before_reading(tiny_plugins, image_folder, tmp_path, capsys, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    monkeypatch.setattr(exclusions, "MAX_EXCLUDE_BYTES", 1024)
    big = tmp_path / "big.txt"
    big.write_text("train/cats/cats_0.jpg\n" * 100)
    assert big.stat().st_size > 1024
    code, err = run_with_exclusions(recipe, big, tmp_path / "run", capsys)
    assert code == 2 and "over the 0.000976562 MiB bound" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, err = run_with_exclusions(recipe, fifo, tmp_path / "run", capsys)  # opening a FIFO for reading would block forever
    assert code == 2 and "is a FIFO, not a regular file" in err


def test_listed_paths_not_in_the_data_set_are_noted_not_fatal(tiny_plugins, image_folder, tmp_path, capsys):
    file = tmp_path / "exclude.txt"
    file.write_text("# a comment\n\ntrain/cats/cats_0.jpg\ntrain/cats/gone.jpg\n")
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    code, err = run_with_exclusions(recipe, file, tmp_path / "run", capsys)
    assert code == 0
    assert "left out 1 image listed in" in err and "1 path(s) in" in err and "(first: train/cats/gone.jpg)" in err


def test_bad_audit_settings_are_one_line_with_a_suggestion(tiny_plugins, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    assert cli("run", str(recipe), "--set", "audit.fold=3") == 2
    assert "unknown key 'audit.fold'; did you mean 'folds'" in capsys.readouterr().err
    assert cli("run", str(recipe), "--set", "audit.folds=1") == 2
    assert "'audit.folds'" in capsys.readouterr().err
    assert cli("run", str(recipe), "--set", "audit=[1]") == 2
    assert "'audit' must be a mapping of settings or true/false" in capsys.readouterr().err
    assert cli("run", str(recipe), "--set", "dataset.exclude=[]") == 2
    assert "'dataset.exclude' must be the path of an exclusions file" in capsys.readouterr().err
    assert cli("audit", str(recipe), "--write-exclusions", str(tmp_path / "x.txt"), "--kinds", "label_isue") == 2
    assert "unknown kind 'label_isue'; did you mean 'label_issue'" in capsys.readouterr().err


def giant_png(path: Path, width: int, height: int) -> Path:
    """A valid 1x1 PNG whose header then claims ``width`` x ``height`` (CRC fixed): a decompression bomb's header."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_an_image_header_claiming_ten_gigapixels_is_reported_without_decoding(tmp_path):
    bomb = giant_png(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb).load()  # the bad case is real: PIL refuses to decode it
    assert header_size(bomb) == (100_000, 100_000)
    data = SplitData(x=np.zeros((1, 2), np.float32), y=np.zeros(1, np.int64), paths=("bomb.png",), files=(bomb,), digests=("a",))
    (found,) = find_image_sizes(AuditInputs(classes=("a",), splits={"train": data}))
    assert found.kind == "image_size" and found.detail.startswith("huge: 100000 x 100000")


def test_unreadable_or_fake_images_give_no_size_finding(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"not an image at all")
    os.mkfifo(tmp_path / "fifo.jpg")
    assert header_size(fake) is None and header_size(tmp_path / "fifo.jpg") is None and header_size(tmp_path / "missing.jpg") is None


def test_a_tampered_predictions_csv_costs_only_the_accuracy(tiny_plugins, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    assert cli("run", str(recipe), "--out", str(tmp_path / "run")) == 0
    (tmp_path / "run" / "predictions.csv").write_bytes(b"\x00garbage\xff")
    capsys.readouterr()
    assert cli("audit", str(tmp_path / "run"), "--out", str(tmp_path / "again")) == 0
    summary = json.loads((tmp_path / "again" / "audit.json").read_text())["summary"]
    assert "test_accuracy" not in summary and summary["leaked_test_images"] == 0
