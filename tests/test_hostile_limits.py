"""Limits read from the environment: ``inf`` means "no limit" for every time and size bound, never an
OverflowError; a malformed value is still one line naming the variable."""

from __future__ import annotations

import math
import socket
import zipfile
from pathlib import Path

import pytest
import torch

from tlkit.errors import DataError
from tlkit.util.units import positive_number

TIME_AND_SIZE_LIMITS = (
    "TLKIT_DECODE_TIMEOUT_S",
    "TLKIT_DOWNLOAD_STALL_S",
    "TLKIT_DOWNLOAD_DEADLINE_S",
    "TLKIT_MAX_UNPACKED_BYTES",
    "TLKIT_MAX_COMPRESSION_RATIO",
    "TLKIT_DIST_TIMEOUT",
)


@pytest.mark.parametrize("raw", ["inf", "INF", "Infinity", " inf "])
def test_inf_is_no_limit(raw: str) -> None:
    assert positive_number("TLKIT_X_S", 3.0, {"TLKIT_X_S": raw}) == math.inf


@pytest.mark.parametrize("raw", ["nan", "-inf", "0", "soon"])
def test_nan_and_non_positive_limits_are_still_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="TLKIT_X_S"):
        positive_number("TLKIT_X_S", 3.0, {"TLKIT_X_S": raw})


def test_every_documented_limit_says_inf_means_no_limit() -> None:
    text = (Path(__file__).parents[1] / "docs" / "robustness.md").read_text()
    section = text.split("## Bounds you can change", 1)[1].split("\n## ", 1)[0]
    assert "`inf`" in section and "no limit" in section
    assert all(name in section or name == "TLKIT_DIST_TIMEOUT" for name in TIME_AND_SIZE_LIMITS)


def test_archive_limits_of_inf_unpack_an_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.sources.archives import Limits, unpack

    for name in ("TLKIT_DOWNLOAD_STALL_S", "TLKIT_DOWNLOAD_DEADLINE_S", "TLKIT_MAX_UNPACKED_BYTES", "TLKIT_MAX_COMPRESSION_RATIO"):
        monkeypatch.setenv(name, "inf")
    limits = Limits.from_env()
    assert limits.max_unpacked_bytes == math.inf and limits.stall_s == math.inf
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/train/a/x.jpg", b"\0" * (1 << 20))
    unpack(archive, tmp_path / "out", limits=limits)
    assert (tmp_path / "out" / "train" / "a" / "x.jpg").stat().st_size == 1 << 20


def test_a_download_with_no_stall_limit_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading
    from functools import partial

    from tlkit.sources.archives import Limits, download

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(b"x" * 1000)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TLKIT_DOWNLOAD_STALL_S", "inf")
        monkeypatch.setenv("TLKIT_DOWNLOAD_DEADLINE_S", "inf")
        download(f"http://127.0.0.1:{server.server_address[1]}/f.bin", tmp_path / "f.bin", Limits.from_env())
    finally:
        server.shutdown()
        server.server_close()
    assert (tmp_path / "f.bin").read_bytes() == b"x" * 1000


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decode_timeout_of_inf_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    from conftest import make_image
    from feature_helpers import TINY_PRE, TinyCNN

    from tlkit.extract.features import extract, prepare_model

    monkeypatch.setenv("TLKIT_DECODE_TIMEOUT_S", "inf")
    paths = [make_image(tmp_path / f"ok_{i}.jpg", (200, 40, 40), seed=i) for i in range(3)]
    result = extract(prepare_model(TinyCNN(), torch.device("cpu")), paths, TINY_PRE, batch_size=2, workers=workers)
    assert result.kept == [0, 1, 2] and not result.bad


def test_a_dist_timeout_of_inf_joins_a_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.run.ranks import DistEnv, process_group, timeout_s

    monkeypatch.setenv("TLKIT_DIST_TIMEOUT", "inf")
    assert timeout_s() == math.inf
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=str(port), launcher="torchrun")
    with process_group(env, torch.device("cpu")):
        import torch.distributed as dist

        assert dist.get_world_size() == 1


def test_a_malformed_limit_is_still_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from tlkit.sources.archives import Limits

    monkeypatch.setenv("TLKIT_MAX_UNPACKED_BYTES", "lots")
    with pytest.raises(DataError, match="TLKIT_MAX_UNPACKED_BYTES='lots'"):
        Limits.from_env()
