"""The real ants/bees recipe, as a new user runs it: Lite0 offline reaches the reference accuracy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlkit.cli.app import main

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "hymenoptera.yaml"


@pytest.mark.slow
def test_lite0_reaches_the_reference_accuracy(plugins, hymenoptera, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["run", str(RECIPE), "--set", "backbone.name=efficientnet_lite0", "--set", f"dataset.root={hymenoptera}", "--out", str(out)])
    assert info.value.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"] == {"train": 244, "test": 153}
    assert metrics["test_accuracy"] >= 0.93  # a plain PyTorch pipeline reaches 0.948 with these weights
    assert metrics["feature_dim"] == 1280
    err = capsys.readouterr().err
    assert "train: 244 x 3 x 224 x 224" in err and "test: 153 x 3 x 224 x 224" in err
    assert "train: left out 1 file (hidden, not an image by name, or a broken link): ants/imageNotFound.gif" in err


def test_resnet18_without_weights_stops_at_once(hymenoptera, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "TLKIT_LOAD_PLUGINS": ""}
    env.pop("TLKIT_OFFLINE", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tlkit", "run", str(RECIPE), "--set", f"dataset.root={hymenoptera}", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "resnet18-f37072fd.pth" in lines[0] and str(tmp_path / "torch" / "hub" / "checkpoints") in lines[0]
    assert not (tmp_path / "out").exists()
    assert elapsed < 120, f"took {elapsed:.0f} s"  # seconds in practice; generous for a loaded CI machine
