"""Hostile and unlucky cases around a run directory: damaged files are refused when a run is loaded,
an earlier run's user files are never deleted silently, a full disk while plotting is one line,
SIGTERM stops a run like Ctrl-C, a one-class data set warns. Each test checks that the bad case was
really produced (the damaged file still parses, the disk really was full, the run really was in
extraction) before checking tlkit's answer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import make_image, make_image_folder, write_recipe
from safetensors.torch import load_file

from tlkit.contract.observer import Observer
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins
from tlkit.errors import OutputError, RunError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run
from tlkit.saved.reader import load_model
from tlkit.saved.run_directory import MARKER, RunDirectory
from tlkit.util.hashing import file_sha256

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny() -> Plugins:
    from tiny import TinyPlugin

    return load_plugins(entry_points=False, extra=[TinyPlugin()])


@pytest.fixture(scope="module")
def finished(tiny: Plugins, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("runs")
    root = make_image_folder(base / "data", n_train=3, n_test=2)
    recipe = load_recipe(write_recipe(base / "r.yaml", root), tiny)  # tiny_cnn: random weights kept in the run
    old = os.umask(0o022)
    try:
        return run(recipe, base / "run").out_dir
    finally:
        os.umask(old)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


def test_run_json_records_the_sha256_of_every_file_written(finished: Path) -> None:
    recorded = json.loads((finished / MARKER).read_text())["files"]
    on_disk = sorted(str(p.relative_to(finished)) for p in finished.rglob("*") if p.is_file() and p.name != MARKER)
    assert sorted(recorded) == on_disk and "head.safetensors" in recorded and "backbone.safetensors" in recorded
    assert all(file_sha256(finished / name) == digest for name, digest in recorded.items())


def test_run_folder_honours_the_umask(finished: Path) -> None:
    assert finished.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in finished.iterdir()} == {0o644}


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[12] ^= 0x20  # inside the JSON header
    path.write_bytes(bytes(data))


def _edit_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


DAMAGE = {
    "head data": ("head.safetensors", _flip_last_byte),
    "head header": ("head.safetensors", _flip_header),
    "backbone data": ("backbone.safetensors", _flip_last_byte),
    "classes swapped": ("classes.json", lambda p: _edit_json(p, lambda c: c[::-1])),
    "model.json edited": ("model.json", lambda p: _edit_json(p, lambda m: {**m, "features": {**m["features"], "dim": m["features"]["dim"] + 1}})),
    "model.json cut": ("model.json", lambda p: p.write_bytes(p.read_bytes()[:40])),
    "recipe.yaml seed": ("recipe.yaml", lambda p: p.write_text(p.read_text().replace("seed: 0", "seed: 1"))),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_run_file_is_refused_in_one_line(finished: Path, tiny: Plugins, tmp_path: Path, case: str) -> None:
    name, damage = DAMAGE[case]
    run_dir = _copy(finished, tmp_path)
    load_model(run_dir, tiny)  # the untouched copy loads
    before = (run_dir / name).read_bytes()
    damage(run_dir / name)
    assert (run_dir / name).read_bytes() != before
    if case in ("head data", "backbone data"):
        load_file(str(run_dir / name))  # the bad case: the damaged tensors still load without complaint
    with pytest.raises(RunError) as info:
        load_model(run_dir, tiny)
    message = _one_line(info.value)
    assert str(run_dir / name) in message and "damaged" in message


def test_a_damaged_run_json_is_refused(finished: Path, tiny: Plugins, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    (run_dir / MARKER).write_text('{"files": ')
    with pytest.raises(RunError, match="run.json cannot be read") as info:
        load_model(run_dir, tiny)
    _one_line(info.value)


def test_predict_on_a_damaged_run_exits_2_with_one_line(finished: Path, tiny: Plugins, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tlkit.cli.app import main

    run_dir = _copy(finished, tmp_path)
    _flip_last_byte(run_dir / "head.safetensors")
    image = make_image(tmp_path / "x.jpg", (200, 40, 40))
    set_plugins(tiny)
    try:
        with pytest.raises(SystemExit) as info:
            main(["predict", str(run_dir), str(image)])
    finally:
        set_plugins(None)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and "head.safetensors is damaged" in err


def test_out_at_an_earlier_run_refuses_to_delete_the_users_files(finished: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    RunDirectory(run_dir).discard()  # a plain earlier run may be replaced
    (run_dir / "my notes.txt").write_text("mine")
    with pytest.raises(OutputError) as info:
        RunDirectory(run_dir)
    message = _one_line(info.value)
    assert "my notes.txt" in message and "would delete them" in message
    assert (run_dir / "my notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob("copy.partial-*"))


class _Notes(Observer):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


def test_a_one_class_data_set_warns(tiny: Plugins, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=("only",), n_train=3, n_test=2)
    notes = _Notes()
    result = run(load_recipe(write_recipe(tmp_path / "r.yaml", root), tiny), tmp_path / "run", notes)
    assert result.metrics.test.accuracy == 1.0  # the bad case: a meaningless 100%
    assert any(line.startswith("warning: the data set has one class ('only')") for line in notes.lines), notes.lines


_FULL_PLOTS = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from tiny import TinyPlugin
    from tlkit.run.engine import run
    from tlkit.errors import OutputError
    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import load_recipe

    out = Path({out!r})

    class FillAtWrite(Observer):
        def stage(self, text):
            if text == "writing the run directory":  # after the start check: the disk fills up meanwhile
                fh = open(out.parent / "filler", "wb", buffering=0)
                try:
                    while True:
                        fh.write(bytes(4096))
                except OSError:
                    print("filled", flush=True)
                fh.close()
                filler = out.parent / "filler"
                os.truncate(filler, filler.stat().st_size - {room})  # leave this much room (tmpfs: 4 KiB pages)

    recipe = load_recipe({recipe!r}, load_plugins(entry_points=False, extra=[TinyPlugin()]))
    try:
        run(recipe, out, FillAtWrite())
    except OutputError as exc:
        print("ERROR", exc)
    print("left", sorted(p.name for p in out.parent.iterdir()))
    """
)


@pytest.mark.parametrize(("room", "failing"), [(0, "recipe.yaml"), (48 * 1024, "confusion_matrix.png")])  # 48 KiB: the small files and the audit fit
def test_a_full_disk_while_writing_the_run_is_one_line(tmp_path: Path, room: int, failing: str) -> None:
    """No room at all (the first file fails), or room for the small files but not the plots."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare(1) and CAP_SYS_ADMIN to mount a small private tmpfs")
    root = make_image_folder(tmp_path / "data", n_train=3, n_test=2)
    recipe = write_recipe(tmp_path / "r.yaml", root)
    mount = tmp_path / "disk"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_FULL_PLOTS.format(tests=str(TESTS), out=str(mount / "run"), recipe=str(recipe), room=room))
    shell = f"mount -t tmpfs -o size=17m tmpfs {mount} && {sys.executable} {script}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert "filled" in lines, done.stdout  # the bad case happened, after the start check passed
    error = next(line for line in lines if line.startswith("ERROR"))
    assert "No space left on device" in error and str(mount / "run.partial-") in error and "free some disk space" in error
    assert f"/{failing} " in error, error
    assert lines[-1] == "left ['filler']"  # no staging folder, no half run


@pytest.mark.parametrize("group", [False, True], ids=["process", "process-group"])
def test_sigterm_stops_a_run_like_ctrl_c(tmp_path: Path, feature_cache_dir: Path, group: bool) -> None:
    """SIGTERM to the process (``timeout``, docker stop) or to its whole group (a launcher, ``kill -TERM -PGID``:
    the decoding worker may die of it before the main process handles it): the same clean stop."""
    root = make_image_folder(tmp_path / "data", n_train=30, n_test=6)
    recipe = tmp_path / "term.yaml"
    recipe.write_text(
        f"dataset: {{root: {root}}}\nbackbone: {{name: 'timm:test_resnet', weights: none}}\n"
        "extract: {batch_size: 1, workers: 1, device: cpu}\nhead: {name: linear, epochs: 10}\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLKIT_LOAD_PLUGINS": "", "COLUMNS": "200", "TLKIT_CACHE_DIR": str(feature_cache_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tlkit", "run", str(recipe), "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        start_new_session=group,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("extracting train: ") and "/" in line and not line.startswith("extracting train: 0/"):
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.send_signal(signal.SIGTERM)  # what `timeout`, docker stop and schedulers send
            break
        assert time.monotonic() < deadline, "".join(lines)
    else:
        pytest.fail("the run ended before extraction:\n" + "".join(lines))
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=60) == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM) while extracting the train features" in err
    assert not out.exists() and not list(tmp_path.glob("run.partial-*"))
    chunks = list(feature_cache_dir.rglob("chunk-*.safetensors"))
    assert chunks and sum(len(load_file(str(c))) for c in chunks) >= 1  # the batches done were saved
