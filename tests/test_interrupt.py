"""Ctrl-C on a real ``tlkit run``: exit code 130, workers gone, no half-written run, and the next run
ends exactly where an uninterrupted one does.

The run is a subprocess; the test reads its stderr and sends SIGINT only once a progress line says
it is inside the stage under test (extraction, then training), never after a blind sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder

from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run

RECIPE = """\
name: interrupt
seed: 3
dataset: {{name: imagefolder, root: {root}}}
backbone: {{name: 'timm:test_resnet', weights: none}}
extract: {{batch_size: 1, workers: 2, device: cpu}}
head: {{name: linear, lr: 0.05, epochs: 3000, eval_every: 25}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small data set, its recipe, and the metrics of an uninterrupted run of it (in-process)."""
    from tlkit.contract.plugin_manager import load_plugins

    base = tmp_path_factory.mktemp("interrupt")
    root = make_image_folder(base / "data", n_train=30, n_test=6)
    recipe = base / "interrupt.yaml"
    recipe.write_text(RECIPE.format(root=root), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): same arithmetic, and no thread thrashing
    try:
        result = run(load_recipe(recipe, load_plugins(entry_points=False)), base / "reference")
    finally:
        torch.set_num_threads(threads)
    return {"base": base, "recipe": recipe, "metrics": result.metrics.to_dict()}


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (the DataLoader workers of a run)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tlkit(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLKIT_LOAD_PLUGINS": "", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "tlkit", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell without job control starts background jobs with SIGINT ignored, and Python keeps
        # ignoring it; give the run the default disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def _metrics_without_timings(path: Path) -> dict[str, Any]:
    metrics = json.loads(path.read_text())
    metrics.pop("timings_s")
    return metrics


def _same_metrics(got: dict[str, Any], expected: dict[str, Any]) -> None:
    expected = {k: v for k, v in expected.items() if k != "timings_s"}
    assert got.keys() == expected.keys()
    for key in expected:
        if key == "features":  # where they came from: a rerun reuses what the interrupted run cached
            assert got[key]["cached"] + got[key]["extracted"] == expected[key]["cached"] + expected[key]["extracted"]
        elif key == "history":  # loss values agree to float rounding across processes
            assert len(got[key]) == len(expected[key])
            for a, b in zip(got[key], expected[key]):
                assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a)
        else:
            assert got[key] == expected[key], key


@pytest.mark.parametrize(
    ("stage", "trigger", "process_group"),
    [
        ("extracting the train features", "extracting train: ", True),  # Ctrl-C in a terminal: the whole group
        ("training the linear head", "  epoch 25:", False),  # kill -INT on the main process only
    ],
)
def test_sigint_exits_130_cleanly_and_the_next_run_matches(setup: dict[str, Any], stage: str, trigger: str, process_group: bool) -> None:
    out = setup["base"] / f"run-{stage.split()[0]}"
    proc = _tlkit(str(setup["recipe"]), "--out", str(out), start_new_session=True)
    assert proc.stderr is not None
    lines: list[str] = []
    workers: set[int] = set()
    deadline = time.monotonic() + 180
    for line in proc.stderr:
        lines.append(line)
        workers |= _children(proc.pid)
        if line.startswith(trigger):
            if process_group:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(lines)
    else:
        pytest.fail("the run ended before reaching the stage:\n" + "".join(lines))
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    err = "".join(lines) + rest
    assert code == 130, err
    assert "Traceback" not in err
    assert f"interrupted while {stage}" in err and "nothing was written" in err
    time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "DataLoader workers outlived the run"
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}.partial-*")), "an interrupted run left its staging folder"

    rerun = _tlkit(str(setup["recipe"]), "--out", str(out))
    _stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    _same_metrics(_metrics_without_timings(out / "metrics.json"), setup["metrics"])
    assert (out / "run.json").is_file() and not (out / "INCOMPLETE").exists()
    assert "the feature cache keeps every feature extracted so far" in err
    features = json.loads((out / "metrics.json").read_text())["features"]
    total = features["cached"] + features["extracted"]
    if stage.startswith("training"):  # every feature was extracted before training: the rerun extracts none
        assert (features["cached"], features["extracted"]) == (total, 0), stderr
    else:  # the features finished before the interrupt came back from the cache, not from the images
        assert features["cached"] >= 1, stderr
    assert f"features: {features['cached']} cached, {features['extracted']} extracted" in stderr
    cache = Path(features["cache"])
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")], "the interrupt left a partial cache file"
