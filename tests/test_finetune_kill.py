"""A real fine-tuning process killed with SIGKILL after its first checkpoint, resumed, ends with bitwise
the same weights as a run that was never interrupted (CPU, deterministic settings, same thread count)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from finetune_helpers import make_data
from safetensors.torch import load_file

TESTS = Path(__file__).resolve().parent
EPOCHS = 8  # enough that the SIGKILL lands mid-run even when this process is descheduled for a few epochs

SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from finetune_helpers import TinyBNPlugin, recipe_data
from tlkit.run.engine import run
from tlkit.contract.plugin_manager import load_plugins
from tlkit.recipe.loader import resolve
plugins = load_plugins(entry_points=False, extra=[TinyBNPlugin()])
recipe = resolve(recipe_data(Path({root!r}), strategy="full", epochs={epochs}, optimizer="sgd", schedule="cosine", val_fraction=0.34), plugins)
resume = {resume!r}
print(run(recipe, Path({out!r}), resume=Path(resume) if resume else None).out_dir)
"""


def _process(root: Path, out: Path, resume: Path | None = None) -> subprocess.Popen[bytes]:
    code = SCRIPT.format(tests=str(TESTS), root=str(root), out=str(out), epochs=EPOCHS, resume=str(resume) if resume else None)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen[bytes]) -> None:
    _out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-2000:]


def _checkpointed_epoch(parent: Path, name: str) -> int:
    for state in parent.glob(f"{name}.partial-*/checkpoints/checkpoint.json"):
        try:
            return int(json.loads(state.read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            return 0  # being replaced right now: look again
    return 0


def test_sigkill_after_first_checkpoint_then_resume_is_bitwise(tmp_path: Path) -> None:
    root = make_data(tmp_path / "data")
    straight = _process(root, tmp_path / "straight")
    killed = _process(root, tmp_path / "killed")
    deadline = time.monotonic() + 300
    while _checkpointed_epoch(tmp_path, "killed") < 1:
        assert killed.poll() is None, killed.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    epoch = _checkpointed_epoch(tmp_path, "killed")
    assert 1 <= epoch < EPOCHS and not (tmp_path / "killed").exists()  # really interrupted mid-run
    _finish(_process(root, tmp_path / "killed", resume=tmp_path / "killed"))
    _finish(straight)
    for name in ("backbone.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "killed" / name)), load_file(str(tmp_path / "straight" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    history = json.loads((tmp_path / "killed" / "metrics.json").read_text())["history"]
    assert [p["epoch"] for p in history] == list(range(1, EPOCHS + 1))
    assert not list(tmp_path.glob("killed.partial-*"))
