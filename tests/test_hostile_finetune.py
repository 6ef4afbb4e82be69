"""Fine-tuning held to the core's standard: a SIGTERM mid-training, two resumes at once, a data set changed
under a resume, a disk filling up between checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from finetune_helpers import make_data, recipe_data

TESTS = Path(__file__).resolve().parent

CLI = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from finetune_helpers import TinyBNPlugin
from tlkit.contract.plugin_manager import load_plugins, set_plugins
from tlkit.cli.app import main
set_plugins(load_plugins(entry_points=False, extra=[TinyBNPlugin()]))
main({argv!r})
"""


def _cli(argv: list[str]) -> subprocess.Popen[bytes]:
    code = CLI.format(tests=str(TESTS), argv=argv)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _recipe(tmp_path: Path, root: Path, **finetune: object) -> Path:
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(recipe_data(root, **finetune)))
    return path


def _checkpointed_epoch(parent: Path, name: str) -> int:
    for state in parent.glob(f"{name}.partial-*/checkpoints/checkpoint.json"):
        try:
            return int(json.loads(state.read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return 0  # being replaced right now: look again
    return 0


def _wait_for_checkpoint(process: subprocess.Popen[bytes], parent: Path, name: str) -> None:
    deadline = time.monotonic() + 300
    while _checkpointed_epoch(parent, name) < 1:
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)


def test_sigterm_during_fine_tuning_exits_143_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    root = make_data(tmp_path / "data")
    recipe = _recipe(tmp_path, root, epochs=200)  # far more epochs than the SIGTERM lets it reach
    process = _cli(["run", str(recipe), "--out", str(tmp_path / "ft")])
    _wait_for_checkpoint(process, tmp_path, "ft")
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=300)
    text = err.decode()
    assert "SIGTERM in epoch" in text, text[-2000:]  # really stopped while training
    assert process.returncode == 143, text[-2000:]
    assert "Traceback" not in text and "--resume" in text
    assert list(tmp_path.glob("ft.partial-*/checkpoints/checkpoint.json"))  # the checkpoint is kept to resume from
    assert not (tmp_path / "ft").exists()
    assert os.path.isdir(root)
