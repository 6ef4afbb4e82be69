"""Hostile and unlucky inputs outside the cache: YAML bombs and duplicate keys, absurd head options,
NaN losses, archive bombs, stalled downloads, a data root that is a file. Each test checks that the
bad case is real (the bomb really expands, plain PyTorch really produces NaN, the server really keeps
sending) and that tlkit answers with one line or the right result."""

from __future__ import annotations

import http.server
import io
import socketserver
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tlkit.contract.plugin_manager import Plugins, load_plugins
from tlkit.contract.specs import Features, FitContext
from tlkit.errors import DataError, RecipeError, TlkitError
from tlkit.recipe.loader import load_recipe
from tlkit.recipe.yaml_loading import MAX_NODES, expanded_size, safe_load
from tlkit.sources import archives
from tlkit.sources.archives import Limits, fetch, unpack

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)  # 9 levels of 10 aliases: 10**9 leaves from a few hundred bytes


def _plugins() -> Plugins:
    return load_plugins(entry_points=False)


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message
    return message


# --- YAML ---


def test_billion_laughs_is_refused_fast(tmp_path: Path) -> None:
    node = yaml.compose(BOMB, Loader=yaml.SafeLoader)  # the bad case: it really stands for a billion nodes
    assert expanded_size(node, limit=10**12) > 10**9
    path = tmp_path / "bomb.yaml"
    path.write_text("dataset: {root: d}\n" + BOMB)
    plugins = _plugins()
    started = time.perf_counter()
    with pytest.raises(RecipeError) as info:
        load_recipe(path, plugins)
    assert time.perf_counter() - started < 1.0
    message = _one_line(info.value)
    assert str(path) in message and f"more than {MAX_NODES} nodes" in message


def test_an_alias_that_contains_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("dataset: &d {root: d, again: *d}\n")
    with pytest.raises(RecipeError, match="would expand without end") as info:
        load_recipe(path, _plugins())
    assert "line 1" in _one_line(info.value)


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    text = "dataset: {root: d}\nhead:\n  name: linear\n  lr: 0.1\n  lr: 100\n"
    assert yaml.safe_load(text)["head"]["lr"] == 100  # the bad case: plain PyYAML keeps the last silently
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, _plugins())
    message = _one_line(info.value)
    assert "duplicate key 'lr'" in message and "line 5" in message and "first given on line 4" in message


def test_merge_keys_may_repeat_keys_on_purpose() -> None:
    assert safe_load("base: &b {lr: 1, epochs: 2}\nhead: {<<: *b, lr: 3}\n")["head"] == {"lr": 3, "epochs": 2}


def test_scientific_notation_is_a_number(tmp_path: Path) -> None:
    assert yaml.safe_load("epochs: 1e3")["epochs"] == "1e3"  # the bad case: YAML 1.1 reads a string
    path = tmp_path / "sci.yaml"
    path.write_text("dataset: {root: d}\nhead: {name: linear, epochs: 1e3, lr: 1e-3}\n")
    recipe = load_recipe(path, _plugins(), ["head.eval_every=1e2"])
    assert (recipe.head.options.epochs, recipe.head.options.lr, recipe.head.options.eval_every) == (1000, 0.001, 100)
    with pytest.raises(RecipeError, match="head.epochs"):
        load_recipe(path, _plugins(), ["head.epochs=1.5e0"])  # 1.5 epochs is still refused


# --- heads ---


@pytest.mark.parametrize(
    ("head", "setting"),
    [("mlp", "hidden=1e12"), ("mlp", "lr=.inf"), ("mlp", "weight_decay=.inf"), ("logreg", "l2=.inf"), ("logreg", "l2=1e300"), ("knn", "k=1e15")],
)
def test_absurd_head_options_are_refused_before_any_work(tmp_path: Path, head: str, setting: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("dataset: {root: d}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, _plugins(), [f"head.name={head}", f"head.{setting}"])
    assert f"'head.{setting.split('=')[0]}'" in _one_line(info.value)


def _ctx() -> FitContext:
    return FitContext(num_classes=2, seed=0, monitor=None, report=lambda epoch, values: None)


def test_a_linear_head_whose_loss_becomes_nan_stops_naming_the_option(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 8, generator=generator) * 1e20
    y = torch.arange(20) % 2
    # The bad case, in plain PyTorch: SGD at lr 100 on such features diverges to NaN.
    layer = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=100)
    for _ in range(50):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x), y)
        loss.backward()
        optimizer.step()
    assert not torch.isfinite(loss)
    spec = _plugins().heads.get("linear")
    # on the raw features (standardize: false) the head diverges as plain PyTorch does, and says so in one line
    options = spec.options(lr=100.0, epochs=50, eval_every=5, standardize=False)
    with pytest.raises(RecipeError) as info:
        spec.fit(Features(x, y), options, _ctx())
    message = _one_line(info.value)
    assert "head 'linear'" in message and "head.lr = 100.0" in message and ("nan" in message or "inf" in message)
    # standardised (the default), the same features and step train to finite weights
    trained = spec.fit(Features(x, y), spec.options(lr=100.0, epochs=50, eval_every=5), _ctx())
    assert all(torch.isfinite(p).all() for p in trained.module.parameters())


def test_an_mlp_on_non_finite_features_stops_in_one_line() -> None:
    x = torch.randn(20, 8)
    x[3, 2] = float("inf")
    y = torch.arange(20) % 2
    spec = _plugins().heads.get("mlp")
    with pytest.raises(RecipeError) as info:
        spec.fit(Features(x, y), spec.options(epochs=3, hidden=4), _ctx())
    assert "head 'mlp'" in _one_line(info.value) and "head.lr" in str(info.value)


# --- archives ---


def _zip_of_zeros(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("data/train/a/zeros.jpg", "w") as member:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                member.write(block)
    return path


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = _zip_of_zeros(tmp_path / "bomb.zip", 80 << 20)
    with zipfile.ZipFile(archive) as zf:  # the bad case: under 1 MB that unpacks to 80 MiB
        assert zf.infolist()[0].file_size == 80 << 20 and archive.stat().st_size < 1 << 20
    root = tmp_path / "target" / "data"
    with pytest.raises(DataError) as info:
        unpack(archive, root)  # default limits
    message = _one_line(info.value)
    assert "refused before unpacking" in message and "zip bomb" in message and "TLKIT_MAX_COMPRESSION_RATIO" in message
    assert list(root.parent.iterdir()) == []


def test_total_unpacked_size_is_bounded_and_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"data/train/a/{i}.jpg")
            info.size = 2 << 20
            tf.addfile(info, io.BytesIO(bytes(info.size)))
    root = tmp_path / "target" / "data"
    monkeypatch.setenv("TLKIT_MAX_UNPACKED_BYTES", str(5 << 20))
    with pytest.raises(DataError, match=r"more than 5\.0 MiB \(at member 'data/train/a/2.jpg'\)"):
        unpack(archive, root)
    assert list(root.parent.iterdir()) == []
    monkeypatch.setenv("TLKIT_MAX_UNPACKED_BYTES", str(7 << 20))
    unpack(archive, root, limits=Limits(ratio_floor_bytes=10 << 20))  # explicit limits win over the environment
    assert len(list(root.rglob("*.jpg"))) == 3


class _Dribble(http.server.BaseHTTPRequestHandler):
    """Sends a header and then ``block`` bytes every ``pause`` seconds, forever (until the client leaves)."""

    block = 1
    pause = 0.1
    sent: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"x" * self.block)
                self.wfile.flush()
                self.sent.append(self.block)
                time.sleep(self.pause)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve(block: int, pause: float) -> Iterator[tuple[str, list[int]]]:
    sent: list[int] = []
    handler = type("Handler", (_Dribble,), {"block": block, "pause": pause, "sent": sent})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/data.zip", sent
    finally:
        server.shutdown()
        server.server_close()


def test_a_dribbling_download_is_given_up_as_stalled(tmp_path: Path) -> None:
    with _serve(block=1, pause=0.1) as (url, sent):
        started = time.perf_counter()
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "data", limits=Limits(stall_s=1.0))
        took = time.perf_counter() - started
    assert len(sent) >= 5  # the bad case: bytes kept arriving, far more often than any per-read timeout
    assert 1.0 <= took < 60  # given up after the 1 s stall, not after the whole dribble; generous for a loaded machine
    message = _one_line(info.value)
    assert "stalled" in message and url in message and "TLKIT_DOWNLOAD_STALL_S" in message
    assert list(tmp_path.iterdir()) == []


def test_an_endless_download_meets_its_deadline(tmp_path: Path) -> None:
    with _serve(block=128 * 1024, pause=0.05) as (url, sent):
        with pytest.raises(DataError, match="took longer than 1 s") as info:
            fetch(url, tmp_path / "data", limits=Limits(stall_s=5.0, deadline_s=1.0))
    assert sum(sent) > 1 << 20  # it was making progress all along
    _one_line(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_progress_goes_through_the_observer(tmp_path: Path) -> None:
    from test_archives import _image_bytes, good_zip

    archive = good_zip(tmp_path / "data.zip", _image_bytes(tmp_path))
    seen: list[tuple[str, int | None, str]] = []
    done: list[int] = []

    @contextmanager
    def task(description: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
        seen.append((description, total, unit))
        yield done.append

    with archives.reporting(task):
        fetch(archive.resolve().as_uri(), tmp_path / "out" / "data")
    assert seen == [(f"downloading {archive.resolve().as_uri()}", archive.stat().st_size, "B")]
    assert sum(done) == archive.stat().st_size


# --- data sets ---


def test_a_data_root_that_is_a_file_is_called_a_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.write_text("not a folder")
    spec = _plugins().datasets.get("imagefolder")
    with pytest.raises(TlkitError) as info:
        spec.load(spec.options(root=str(root)))
    message = _one_line(info.value)
    assert "is a file, not a folder" in message and str(root) in message


# --- decoders that never return ---


class _HangOn:
    """A transform step that never returns for images of one width (as a crafted file would make a decoder)."""

    def __init__(self, width: int, block_signals: bool = False) -> None:
        self.width = width
        self.block_signals = block_signals

    def __call__(self, image: Any) -> Any:
        if image.size[0] == self.width:
            if self.block_signals:  # as if stuck in C code, where no Python signal handler ever runs
                import signal

                signal.signal(signal.SIGALRM, signal.SIG_IGN)
            while True:
                time.sleep(0.05)
        return image


def _hanging_preprocessing(width: int, block_signals: bool = False) -> Any:
    import dataclasses

    from feature_helpers import TINY_PRE
    from torchvision import transforms

    @dataclasses.dataclass(frozen=True)
    class Hanging(type(TINY_PRE)):  # type: ignore[misc]
        def transform(self) -> Any:
            return transforms.Compose([_HangOn(width, block_signals), super().transform()])

    return Hanging(**dataclasses.asdict(TINY_PRE))


def _images(tmp_path: Path) -> list[Path]:
    from conftest import make_image

    paths = [make_image(tmp_path / f"ok_{i}.jpg", (200, 40, 40), seed=i) for i in range(5)]
    paths.insert(2, make_image(tmp_path / "hangs.jpg", (40, 200, 40), size=(47, 40)))
    return paths


def test_a_file_whose_decoding_hangs_is_skipped_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_helpers import TinyCNN

    from tlkit.extract.features import extract, prepare_model

    monkeypatch.setenv("TLKIT_DECODE_TIMEOUT_S", "1")
    paths = _images(tmp_path)
    model = prepare_model(TinyCNN(), torch.device("cpu"))
    started = time.perf_counter()
    result = extract(model, paths, _hanging_preprocessing(47), batch_size=2, workers=1)
    assert time.perf_counter() - started < 30
    assert [p.name for p, _ in result.bad] == ["hangs.jpg"] and "took longer than 1 s to decode" in result.bad[0][1]
    assert result.kept == [0, 1, 3, 4, 5]
    plain = extract(model, [p for p in paths if p.name != "hangs.jpg"], _hanging_preprocessing(0), batch_size=2, workers=1)
    assert torch.equal(result.features, plain.features)  # the others are unaffected


def test_a_shard_member_whose_decoding_hangs_is_skipped_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_helpers import TinyCNN, TinyPlugin

    from tlkit.extract.features import prepare_model
    from tlkit.extract.shard_members import extract_members
    from tlkit.sources.shards import make_from_folder

    monkeypatch.setenv("TLKIT_DECODE_TIMEOUT_S", "1")
    for split in ("train", "val"):
        for path in _images(tmp_path / "images"):
            (tmp_path / "data" / split / "c").mkdir(parents=True, exist_ok=True)
            path.replace(tmp_path / "data" / split / "c" / path.name)
    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    written = make_from_folder(plugins, tmp_path / "data", tmp_path / "shards", 3)
    spec = plugins.datasets.get("webdataset")
    samples = list(spec.load(spec.options(train=written.pattern("train"), test=written.pattern("test"))).splits["train"])
    assert len(samples) == 6 and any(s.member is not None and s.member.name.endswith(".jpg") for s in samples)
    model = prepare_model(TinyCNN(), torch.device("cpu"))
    started = time.perf_counter()
    result = extract_members(model, samples, _hanging_preprocessing(47), batch_size=2, workers=1)
    assert time.perf_counter() - started < 30
    assert len(result.bad) == 1 and "took longer than 1 s to decode" in result.bad[0][1], result.bad
    assert len(result.kept) == 5  # the others are unaffected
    plain = extract_members(model, [samples[i] for i in result.kept], _hanging_preprocessing(0), batch_size=2, workers=1)
    assert torch.equal(result.features, plain.features)


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_malformed_decode_timeout_is_one_line_naming_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from feature_helpers import TinyCNN

    from tlkit.extract.features import extract, prepare_model

    monkeypatch.setenv("TLKIT_DECODE_TIMEOUT_S", value)
    model = prepare_model(TinyCNN(), torch.device("cpu"))
    with pytest.raises(DataError) as info:
        extract(model, _images(tmp_path), _hanging_preprocessing(0), batch_size=2, workers=0)
    message = _one_line(info.value)
    assert f"TLKIT_DECODE_TIMEOUT_S={value!r}" in message and "TLKIT_DECODE_TIMEOUT_S=30" in message


def test_a_decoder_stuck_beyond_signals_ends_the_wait_naming_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feature_helpers import TinyCNN

    from tlkit.extract.features import batch_timeout, extract, prepare_model

    monkeypatch.setenv("TLKIT_DECODE_TIMEOUT_S", "1")
    paths = _images(tmp_path)
    started = time.perf_counter()
    with pytest.raises(DataError) as info:
        extract(prepare_model(TinyCNN(), torch.device("cpu")), paths, _hanging_preprocessing(47, block_signals=True), batch_size=2, workers=1)
    took = time.perf_counter() - started
    assert batch_timeout(1, 2) <= took < batch_timeout(1, 2) + 30  # the per-file alarm could not fire: the backstop did
    message = _one_line(info.value)
    assert "hangs the decoder" in message and str(paths[2]) in message


def test_the_first_byte_timeout_is_15_s_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TLKIT_DOWNLOAD_STALL_S", "TLKIT_DOWNLOAD_DEADLINE_S"):
        monkeypatch.delenv(name, raising=False)
    assert Limits.from_env().first_byte_s == 15.0 and Limits().first_byte_s == 15.0
    assert Limits(stall_s=2.0).answer_timeout() == 2.0  # a shorter stall bound wins
    assert Limits(stall_s=float("inf")).answer_timeout() == 15.0


def test_a_server_that_never_answers_is_given_up_at_the_first_byte_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that accepts the connection and never sends a byte is given up at the answer bound, not the deadline.

    The bound is 15 s by default (test above); a 2 s stall bound shortens it, so the suite waits 2 s, not 15.
    """
    import socket

    monkeypatch.delenv("TLKIT_DOWNLOAD_DEADLINE_S", raising=False)
    monkeypatch.setenv("TLKIT_DOWNLOAD_STALL_S", "2")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing is ever read or sent
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/data.zip"
        started = time.perf_counter()
        with pytest.raises(DataError) as info:
            fetch(url, tmp_path / "data")
        took = time.perf_counter() - started
    finally:
        silent.close()
    assert 1.5 < took < 30  # 2 s; generous for a loaded machine, far below the 60 s stall bound it took before
    message = _one_line(info.value)
    assert url in message and "did not answer within 2 s" in message
    assert list(tmp_path.iterdir()) == []


def test_a_weights_server_that_never_answers_is_given_up_at_the_silence_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub opens its URL without a timeout: the silent server would hold a pretrained download forever.

    The bound is 15 s; the test shortens it to 2 s so the suite does not wait 15.
    """
    import socket

    from tlkit.errors import WeightsError
    from tlkit.sources import pretrained
    from tlkit.sources.pretrained import SILENCE_TIMEOUT, fetch_url

    assert SILENCE_TIMEOUT == 15.0
    monkeypatch.setattr(pretrained, "SILENCE_TIMEOUT", 2.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    previous = socket.getdefaulttimeout()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/tiny-0123abcd.pth"
        started = time.perf_counter()
        with pytest.raises(WeightsError) as info:
            fetch_url(url, "a test backbone", dest_dir=tmp_path / "hub")
        took = time.perf_counter() - started
    finally:
        silent.close()
    assert 1.5 < took < 30 and socket.getdefaulttimeout() == previous  # the process-wide default is put back
    assert url in _one_line(info.value)
    assert not list((tmp_path / "hub").glob("*.pth"))
