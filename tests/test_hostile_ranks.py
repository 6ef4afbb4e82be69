"""Rank peers are not trusted: nothing a peer sends is unpickled, ranks agree on what they run, every wait ends."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dist_workers
import pytest
import torch.multiprocessing as mp
from conftest import make_image_folder, write_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(fn, world: int, *args) -> None:
    mp.start_processes(fn, args=(world, _free_port(), *args), nprocs=world, join=True, start_method="spawn")


def _ranks(out: Path, world: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("stage", ["first", "features", "huge"])
def test_a_pickle_from_a_stranger_as_rank_1_is_never_unpickled(tmp_path, stage):
    """A process that joins as rank 1 and sends a pickle (or announces a 1 TiB record): rank 0 ends in one line, no marker."""
    root = make_image_folder(tmp_path / "data", n_train=7, n_test=4)
    recipe = write_recipe(tmp_path / "r.yaml", root)
    marker = tmp_path / "MARKER"
    _spawn(dist_workers.hostile, 2, str(recipe), str(tmp_path / "run"), str(tmp_path), str(tmp_path / "cache"), str(marker), stage)
    assert not marker.exists()
    error = json.loads((tmp_path / "rank0.json").read_text()).get("error", "")
    assert "\n" not in error and error.startswith("rank 1 sent a malformed record while "), error
    assert ("outside 0.." if stage == "huge" else "not UTF-8 JSON") in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("rank1", "difference"),
    [({"seed": 1}, "a different recipe (seed: 1 vs 0)"), ({"backbone": {"name": "tiny_wide"}}, "a different recipe (backbone.name: \"tiny_wide\" vs \"tiny_cnn\")")],
)
def test_ranks_started_with_different_recipes_stop_with_one_line_naming_the_difference(tmp_path, rank1, difference):
    root = make_image_folder(tmp_path / "data", n_train=7, n_test=4)
    for rank, sections in ((0, {}), (1, rank1)):
        import yaml

        data = yaml.safe_load(write_recipe(tmp_path / f"r{rank}.yaml", root).read_text())
        data.update({k: ({**data[k], **v} if isinstance(v, dict) else v) for k, v in sections.items()})
        (tmp_path / f"r{rank}.yaml").write_text(yaml.safe_dump(data))
    _spawn(dist_workers.run_recipe, 2, str(tmp_path / "r{rank}.yaml"), str(tmp_path / "run"), str(tmp_path), str(tmp_path / "cache"))
    for rank, result in enumerate(_ranks(tmp_path)):
        assert result.get("error", "").startswith(f"rank {rank}/2: rank 1 runs {difference} than rank 0"), result
        assert "\n" not in result["error"]
        assert not any("extracted its shard" in line for line in result["notes"])  # stopped before any image was decoded
    assert not (tmp_path / "run").exists()


def _listing(folder: Path, extra: bytes):
    from tlkit.contract.specs import LoadedDataset, Sample

    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{i}.jpg" for i in range(3)]
    for f in files:
        f.write_bytes(b"x" * 10)
    files[1].write_bytes(b"x" * 10 + extra)
    return LoadedDataset(("a", "b"), {"train": [Sample(f, i % 2) for i, f in enumerate(files)], "test": [Sample(files[0], 0)]})


def test_a_different_data_listing_or_code_version_is_named(tmp_path):
    """Same recipe, a file one byte longer on one rank, or another tlkit: the identity says which."""
    from tlkit.run.rank_records import difference, listing_digest

    digest = listing_digest(_listing(tmp_path, b""))
    assert listing_digest(_listing(tmp_path, b"")) == digest
    longer = listing_digest(_listing(tmp_path, b"!"))
    same = {"recipe": {"seed": 0}, "code": {"tlkit": "0.2.0", "torch": "2"}, "data": digest}
    assert difference(same, dict(same)) == ""
    assert difference(same, {**same, "data": longer}).startswith("a different data listing")
    other_code = {**same, "code": {"tlkit": "0.1.0", "torch": "2"}}
    assert difference(same, other_code) == 'different code ({"tlkit": "0.1.0", "torch": "2"} vs {"tlkit": "0.2.0", "torch": "2"})'
    assert difference(same, {"recipe": "\x1b[2J"}).startswith("different code")  # a malformed identity never passes


def _silent_server() -> tuple[socket.socket, int]:
    """A service on the port that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server, int(server.getsockname()[1])


def test_a_rank_whose_master_port_is_held_by_a_silent_service_ends_within_the_timeout(tmp_path):
    server, port = _silent_server()
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TLKIT_DIST_TIMEOUT": "3"}
    code = (
        "import sys, torch\n"
        "from tlkit.run.ranks import DistEnv, DistributedError, process_group, detect\n"
        "try:\n"
        "    with process_group(detect(), torch.device('cpu')):\n"
        "        print('joined')\n"
        "except DistributedError as exc:\n"
        "    print(exc); sys.exit(2)\n"
    )
    import os

    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    finally:
        server.close()
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stdout.strip()
    assert "\n" not in line and f"cannot join the process group at 127.0.0.1:{port}" in line and "within 3 s" in line, line
    assert time.monotonic() - started < 100  # 3 s (+3 s grace) on a loaded machine; before the fix it never ended


def _peer_part(tmp_path: Path, **changes):
    """A well-formed rank-1 part of a 6-image split (batches of 2), as received, with ``changes`` to its record or floats."""
    from types import SimpleNamespace

    import torch

    from tlkit.contract.specs import Sample
    from tlkit.run.ranks import Received, encode_record

    samples = [Sample(tmp_path / f"{i}.jpg", i % 2) for i in range(6)]
    prepared = SimpleNamespace(dataset=SimpleNamespace(splits={"train": samples, "test": samples[:2]}))
    record = {"rank": 1, "positions": {"train": [2, 3], "test": []}, "shapes": {"train": [2, 4], "test": [0, 0]},
              "bad": [["train", str(samples[3].path), "truncated"]], "cached": 0, "extracted": 2, "seconds": 0.5}
    floats = changes.pop("floats", torch.arange(8, dtype=torch.float32))
    record.update(changes)
    return Received(1, encode_record(record), floats), prepared


def test_a_peer_part_is_read_back_against_rank_0s_listing(tmp_path):
    import torch

    from tlkit.run.rank_records import part_from

    received, prepared = _peer_part(tmp_path)
    part = part_from(received, prepared, 4, "gathering")
    assert part.positions["train"] == [2, 3] and part.features.samples["train"] == tuple(prepared.dataset.splits["train"][2:4])
    assert torch.equal(part.features.features["train"].x, torch.arange(8.0).reshape(2, 4)) and part.features.features["train"].y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"rank": 0}, "it says it is rank 0"),
        ({"positions": {"train": [2, 99], "test": []}}, "'positions.train' is not a list of image positions in 0..5"),
        ({"positions": {"train": "all", "test": []}}, "'positions.train' is not a list"),
        ({"shapes": {"train": [2, 16], "test": [0, 0]}}, "feature shapes"),
        ({"floats": "nan"}, "not finite"),
        ({"floats": "short"}, "do not match their shapes"),
        ({"bad": [["train", "/etc/passwd", "x"]]}, "'bad' names a file that is not in rank 0's listing"),
        ({"cached": -1}, "'cached' is not a count"),
        ({"seconds": "soon"}, "'seconds' is not a duration"),
    ],
)
def test_a_malformed_peer_part_is_one_line_naming_the_rank(tmp_path, changes, reason):
    import torch

    from tlkit.run.rank_records import part_from
    from tlkit.run.ranks import MalformedRecord

    floats = {"nan": torch.full((8,), float("nan")), "short": torch.zeros(5)}.get(changes.get("floats", ""))
    if floats is not None:
        changes = {**changes, "floats": floats}
    received, prepared = _peer_part(tmp_path, **changes)
    with pytest.raises(MalformedRecord, match="^rank 1 sent a malformed record while gathering") as info:
        part_from(received, prepared, 4, "gathering")
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_rank_0s_result_reaches_the_others_as_json_and_a_malformed_one_is_refused():
    from tlkit.run.rank_records import result_from
    from tlkit.run.ranks import MalformedRecord

    split = {"accuracy": 0.5, "balanced_accuracy": 0.5, "correct": 2, "count": 4}
    result = result_from({"out_dir": "/runs/a", "counts": {"train": 8, "test": 4}, "test": split, "train": split}, "waiting")
    assert not isinstance(result, str)
    assert str(result.out_dir) == "/runs/a" and result.metrics.test_accuracy == 0.5 and result.metrics.counts == {"train": 8, "test": 4}
    assert result_from({"error": "rank 0 failed: disk full"}, "waiting") == "rank 0 failed: disk full"
    assert result_from({"error": "bad \x1b[2J"}, "waiting") == "bad \\x1b[2J"  # no escape sequence reaches a terminal raw
    with pytest.raises(MalformedRecord, match="control characters"):
        result_from({"out_dir": "/runs/\x1b[2J", "counts": {"train": 8, "test": 4}, "test": split, "train": split}, "waiting")
    with pytest.raises(MalformedRecord, match="^rank 0 sent a malformed record while waiting"):
        result_from({"out_dir": "/runs/a", "counts": {"train": "many"}}, "waiting")
