"""The real ants/bees data past one process: torchrun ranks, a killed rank, WebDataset shards, compare.

Each test starts real processes on the real data with the offline Lite0 weights, so they are slow;
the single-process reference run is made once per module and shared.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "hymenoptera.yaml"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
pytestmark = pytest.mark.slow


def _lite0(root: Path) -> list[str]:
    return ["--set", "backbone.name=efficientnet_lite0", "--set", f"dataset.root={root}"]


def _cached_features(cache: Path) -> dict[str, torch.Tensor]:
    (entry,) = list((cache / "features").iterdir())
    return {k: v for chunk in entry.glob("chunk-*.safetensors") for k, v in load_file(chunk).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process Lite0 run (in a process of its own, as a user runs it): its metrics and its feature cache."""
    from conftest import HYMENOPTERA as hymenoptera

    if not (hymenoptera / "train").is_dir():
        pytest.skip(f"ants/bees data not found at {hymenoptera}")
    cache = tmp_path_factory.mktemp("reference-cache")
    out = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run([sys.executable, "-m", "tlkit", "run", str(RECIPE), *_lite0(hymenoptera), "--out", str(out)],
                          capture_output=True, text=True, env=_env(cache), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return _Metrics(json.loads((out / "metrics.json").read_text())), cache


class _Metrics:
    """The headline figures of a metrics.json, as attributes."""

    def __init__(self, data: dict) -> None:
        self.test_accuracy, self.train_accuracy = data["test_accuracy"], data["train_accuracy"]
        self.features, self.counts = data["features"], data["counts"]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "TLKIT_CACHE_DIR": str(cache), "TLKIT_DIST_TIMEOUT": "120", "TLKIT_LOAD_PLUGINS": ""}


def test_torchrun_two_ranks_equal_the_one_process_run(reference, hymenoptera, tmp_path):
    metrics, ref_cache = reference
    cache = tmp_path / "cache"
    done = subprocess.run([*TORCHRUN, "-m", "tlkit", "run", str(RECIPE), *_lite0(hymenoptera), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=_env(cache), timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["test_accuracy"] == metrics.test_accuracy and result["train_accuracy"] == metrics.train_accuracy
    assert result["counts"] == {"train": 244, "test": 153}
    # every image extracted by exactly one rank, both ranks working
    with (tmp_path / "run" / "ranks.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 397 and len({(r["split"], r["path"]) for r in rows}) == 397
    assert sorted({r["rank"] for r in rows}) == ["0", "1"]
    assert result["features"]["extracted"] == 397
    assert result["features"]["runtime"]["runtime"] == metrics.features["runtime"]["runtime"]  # recorded, as in one process
    # the same features as the one-process run: each rank computes whole batches of that run, so bit-identical
    ours, theirs = _cached_features(cache), _cached_features(ref_cache)
    assert ours.keys() == theirs.keys() and len(ours) == 397
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) == 0.0
    # the other rank prints the same summary line and exits 0
    summary = [line for line in done.stdout.splitlines() if line.startswith("2 ranks done:")]
    assert len(summary) == 2 and summary[0] == summary[1]


def _subset(hymenoptera: Path, root: Path, per_class: int) -> Path:
    """A smaller ants/bees folder of links (the data itself is never copied)."""
    for split in ("train", "val"):
        for name in ("ants", "bees"):
            (root / split / name).mkdir(parents=True)
            for path in sorted((hymenoptera / split / name).glob("*.jpg"))[:per_class]:
                (root / split / name / path.name).symlink_to(path)
    return root


def test_a_killed_rank_ends_the_run_with_one_error_and_the_rerun_resumes(hymenoptera, tmp_path):
    data = _subset(hymenoptera, tmp_path / "data", 40)
    cache = tmp_path / "cache"
    command = [*TORCHRUN, "-m", "tlkit", "run", str(RECIPE), *_lite0(data), "--set", "extract.batch_size=4", "--out", str(tmp_path / "run")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(cache), cwd=tmp_path)
    lines, pid, killed, rank0_has_features = [], None, None, False
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"rank 1/2: pid (\d+)", line)
        pid = int(found.group(1)) if found else pid
        # rank 0 holds extracted features (its progress line counts some), so the launcher's SIGTERM
        # must make it save them: killing rank 1 any earlier would leave nothing for the rerun to resume
        rank0_has_features |= re.match(r"extracting train: [1-9]\d*/", line) is not None
        if pid and killed is None and rank0_has_features:
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
    process.wait(timeout=300)
    output = "".join(lines)
    assert killed is not None, output[-3000:]
    assert process.returncode != 0 and time.monotonic() - killed < 120, output[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "rank 0/2" in errors[0] and "rerun resumes" in errors[0], output[-3000:]
    assert 'tlkit/' not in "".join(x for x in lines if x.startswith("  File ")), "a traceback from tlkit code"
    assert not (tmp_path / "run").exists()  # nothing half-written
    rerun = subprocess.run(command, capture_output=True, text=True, env=_env(cache), timeout=600, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["features"]["cached"] > 0 and metrics["counts"] == {"train": 80, "test": 80}


def test_webdataset_shards_of_ants_bees_give_the_folder_accuracy(reference, hymenoptera, tmp_path):
    from tlkit.cli.app import main

    metrics, _ = reference
    with pytest.raises(SystemExit) as info:
        main(["shards", "make", str(hymenoptera), str(tmp_path / "shards"), "--shard-size", "50"])
    assert info.value.code == 0
    train, test = str(tmp_path / "shards" / "train-{000000..000004}.tar"), str(tmp_path / "shards" / "test-{000000..000003}.tar")
    out = tmp_path / "run"  # a fresh cache: every member is decoded from the shards
    done = subprocess.run([sys.executable, "-m", "tlkit", "run", str(REPO / "recipes" / "hymenoptera-shards.yaml"),
                           "--set", "dataset.train=" + train, "--set", "dataset.test=" + test, "--out", str(out)],
                          capture_output=True, text=True, env=_env(tmp_path / "cache"), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = _Metrics(json.loads((out / "metrics.json").read_text()))
    assert result.features["extracted"] == 397
    assert result.counts == {"train": 244, "test": 153}
    assert result.test_accuracy == metrics.test_accuracy


def test_compare_ranks_pretrained_lite0_above_random_backbones(reference, hymenoptera, tmp_path):
    _, ref_cache = reference
    out = tmp_path / "compare"
    done = subprocess.run(
        [sys.executable, "-m", "tlkit", "compare", str(RECIPE), "--set", f"dataset.root={hymenoptera}",
         "--backbones", "efficientnet_lite0", "torchvision:mobilenet_v3_small@none", "torchvision:shufflenet_v2_x0_5@none", "resnet18", "--out", str(out)],
        capture_output=True, text=True, env={**_env(ref_cache), "TORCH_HOME": str(tmp_path / "torch")}, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "95% interval" in done.stdout and "efficientnet_lite0" in done.stdout
    assert "skipped resnet18: no pretrained weights offline" in done.stderr
    data = json.loads((out / "compare.json").read_text())
    first, *others = data["results"]
    assert first["backbone"] == "efficientnet_lite0" and first["rank"] == 1 and first["ties_with"] == []
    assert all(first["ci_low"] > other["ci_high"] for other in others)  # the interval excludes the random backbones
    with (out / "compare.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert (out / "compare.png").stat().st_size > 1000
