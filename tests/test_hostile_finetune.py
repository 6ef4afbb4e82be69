"""Fine-tuning held to the core's standard: a SIGTERM mid-training, two resumes at once, a data set changed
under a resume, a disk filling up between checkpoints."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml
from finetune_helpers import TinyBNPlugin, make_data, recipe_data

from tlkit.contract.observer import Observer
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins
from tlkit.errors import OutputError, RunError, RunInterrupted
from tlkit.recipe.loader import Recipe, resolve
from tlkit.run.engine import run

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


# --- in process: resumes, the data set under a resume, a full disk --------------------------------------


@pytest.fixture
def bn_plugins() -> Iterator[Plugins]:
    loaded = load_plugins(entry_points=False, extra=[TinyBNPlugin()])
    set_plugins(loaded)
    try:
        yield loaded
    finally:
        set_plugins(None)


class _StopAfterFirstEpoch(Observer):
    def point(self, label: str, values: Mapping[str, float]) -> None:
        if label == "epoch 1":
            raise KeyboardInterrupt


def _interrupted_run(plugins: Plugins, root: Path, out: Path) -> tuple[Recipe, Path]:
    """A run stopped after its first checkpoint: (its recipe, its staging folder)."""
    recipe = resolve(recipe_data(root, epochs=3), plugins)
    with pytest.raises(RunInterrupted):
        run(recipe, out, _StopAfterFirstEpoch())
    (partial,) = out.parent.glob(f"{out.name}.partial-*")
    return recipe, partial


def test_a_second_resume_of_a_staging_folder_in_use_is_refused(bn_plugins: Plugins, tmp_path: Path) -> None:
    recipe, partial = _interrupted_run(bn_plugins, make_data(tmp_path / "data"), tmp_path / "run")
    held = os.open(partial, os.O_RDONLY | os.O_DIRECTORY)  # what the first resume holds while it trains
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunError, match=f"{re.escape(str(partial))} is in use by another tlkit run") as caught:
            run(recipe, tmp_path / "run", resume=partial)
        assert "\n" not in str(caught.value)
        assert (partial / "checkpoints" / "checkpoint.json").is_file()  # refused, nothing deleted
    finally:
        os.close(held)
    assert run(recipe, tmp_path / "run", resume=partial).metrics.history[-1]["epoch"] == 3.0  # once free, it resumes


def test_resume_after_the_training_folder_changed_is_refused_saying_what_changed(bn_plugins: Plugins, tmp_path: Path) -> None:
    root = make_data(tmp_path / "data")
    recipe, partial = _interrupted_run(bn_plugins, root, tmp_path / "run")
    first = sorted((root / "train" / "cats").iterdir())[0]
    for i in range(2):
        shutil.copy(first, first.with_name(f"added-{i}{first.suffix}"))
    with pytest.raises(RunError, match=r"data set changed since the checkpoint .*: 2 images added, 0 removed") as caught:
        run(recipe, tmp_path / "run", resume=partial)
    assert "\n" not in str(caught.value) and (partial / "checkpoints" / "checkpoint.json").is_file()
    for i in range(2):
        first.with_name(f"added-{i}{first.suffix}").unlink()
    sorted((root / "train" / "dogs").iterdir())[0].unlink()
    with pytest.raises(RunError, match=r"0 images added, 1 removed"):
        run(recipe, tmp_path / "run", resume=partial)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_says_how_to_resume(
    bn_plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tlkit.finetune.checkpoint as ckpt

    real = ckpt.write_atomic

    def full_at_epoch_2(path: Path, data: bytes) -> Path:
        if path.name == "epoch-0002.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(ckpt, "write_atomic", full_at_epoch_2)
    recipe = resolve(recipe_data(make_data(tmp_path / "data"), epochs=3), bn_plugins)
    recipe_file = tmp_path / "ft.yaml"
    recipe = dataclasses.replace(recipe, source=recipe_file)
    with pytest.raises(OutputError) as caught:
        run(recipe, tmp_path / "run")
    (partial,) = tmp_path.glob("run.partial-*")  # the staging folder is kept ...
    message = str(caught.value)
    assert "\n" not in message and "No space left on device" in message
    assert f"tlkit run {recipe_file} --resume {partial}" in message and "epoch 1" in message
    state = json.loads((partial / "checkpoints" / "checkpoint.json").read_text())
    assert state["epoch"] == 1 and (partial / "checkpoints" / state["tensors"]).is_file()  # ... with the last complete checkpoint
    monkeypatch.setattr(ckpt, "write_atomic", real)  # space freed
    resumed = run(recipe, tmp_path / "run", resume=partial)
    assert [p["epoch"] for p in resumed.metrics.history] == [1.0, 2.0, 3.0] and not partial.exists()


def test_a_full_disk_at_the_first_checkpoint_keeps_nothing_and_says_so(bn_plugins: Plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tlkit.finetune.checkpoint as ckpt

    def full(path: Path, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "write_atomic", full)
    recipe = resolve(recipe_data(make_data(tmp_path / "data"), epochs=3), bn_plugins)
    with pytest.raises(OutputError, match="No space left on device.*no checkpoint was kept"):
        run(recipe, tmp_path / "run")
    assert not list(tmp_path.glob("run.partial-*"))
