"""A fine-tuning checkpoint edited by someone: every field of ``checkpoint.json`` is under its checksum,
and a file whose checksum was recomputed (re-sealed) is still parsed field by field with bounds, so
``--resume`` on it is one line naming the file and the field, never a KeyError/ValueError traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tlkit.errors import RunError
from tlkit.finetune import checkpoint as ckpt


def _parts() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    model, optimizer, scheduler = _parts()
    state = ckpt.TrainingState(epoch=2, history=[{"epoch": 1.0, "loss": 0.5}, {"epoch": 2.0, "loss": 0.4}], best_epoch=2, best_score=(0.5, -0.4))
    ckpt.save_checkpoint(tmp_path / "checkpoints", model, optimizer, scheduler, state, {"seed": 0})
    return tmp_path / "checkpoints"


def _resume(folder: Path) -> ckpt.TrainingState:
    found = ckpt.read_checkpoint(folder)
    assert found is not None
    model, optimizer, scheduler = _parts()
    return ckpt.restore(found[0], found[1], model, optimizer, scheduler)


def _edit(folder: Path, change: Any, *, reseal: bool) -> None:
    path = folder / ckpt.STATE_FILE
    info = json.loads(path.read_text())
    change(info)
    if reseal:  # what someone editing on purpose does: the checksum the docs describe, recomputed
        from tlkit.util.hashing import json_sha256

        info["checksum"] = json_sha256({k: v for k, v in info.items() if k != "checksum"})
    path.write_text(json.dumps(info))


def test_an_untouched_checkpoint_resumes(folder: Path) -> None:
    state = _resume(folder)
    assert state.epoch == 2 and state.best_score == (0.5, -0.4) and [p["loss"] for p in state.history] == [0.5, 0.4]


EDITS = {
    "epoch a word": lambda i: i.update(epoch="two"),
    "epoch negative": lambda i: i.update(epoch=-1),
    "epoch missing": lambda i: i.pop("epoch"),
    "history a string": lambda i: i.update(history="abc"),
    "history of strings": lambda i: i.update(history=[{"loss": "low"}]),
    "best score of one": lambda i: i.update(best_score=[1]),
    "best epoch past the epoch": lambda i: i.update(best_epoch=9),
    "tensors outside the folder": lambda i: i.update(tensors="../../etc/passwd"),
    "rng of the wrong shape": lambda i: i["rng"].update(python=[3]),
    "optimizer without groups": lambda i: i["optimizer"].pop("param_groups"),
    "scheduler a list": lambda i: i.update(scheduler=[1, 2]),
    "a list": lambda i: (i.clear(), i.update(format=2)),
}


@pytest.mark.parametrize("case", sorted(EDITS))
@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "resealed"])
def test_an_edited_checkpoint_is_one_line(folder: Path, case: str, reseal: bool) -> None:
    _edit(folder, EDITS[case], reseal=reseal)
    with pytest.raises(RunError) as info:
        _resume(folder)
    message = str(info.value)
    assert "\n" not in message and "checkpoint" in message and str(folder) in message, message


def test_a_tensor_file_swapped_for_a_fifo_is_refused(folder: Path) -> None:
    name = next(folder.glob("epoch-*.safetensors"))
    name.unlink()
    os.mkfifo(name)
    with pytest.raises(RunError, match="FIFO"):
        ckpt.read_checkpoint(folder)  # O_NONBLOCK: the open cannot wait for a writer


def test_a_state_file_swapped_for_dev_zero_is_refused(folder: Path) -> None:
    (folder / ckpt.STATE_FILE).unlink()
    (folder / ckpt.STATE_FILE).symlink_to("/dev/zero")
    with pytest.raises(RunError, match="character device"):
        ckpt.read_checkpoint(folder)
