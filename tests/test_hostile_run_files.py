"""A finished run directory edited by someone: files re-sealed (their sha256 recomputed in run.json)
with values of the wrong type or length, names turned into links to ``/dev/zero`` or FIFOs, sizes in
``model.json`` that would allocate gigabytes. Each is refused in one line naming the file, before any
image is decoded; nothing hangs (the hang cases run in a subprocess under ``timeout``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_image_folder, write_recipe

from tlkit.contract.plugin_manager import Plugins, load_plugins
from tlkit.errors import RunError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run
from tlkit.saved.reader import load_model, predict
from tlkit.saved.run_directory import MARKER
from tlkit.util.hashing import file_sha256

TESTS = Path(__file__).resolve().parent
HANG_LIMIT_S = 120  # a refusal takes well under a second; a hang is what the limit catches


@pytest.fixture(scope="module")
def tiny() -> Plugins:
    from tiny import TinyPlugin

    return load_plugins(entry_points=False, extra=[TinyPlugin()])


@pytest.fixture(scope="module")
def finished(tiny: Plugins, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("runs")
    root = make_image_folder(base / "data", n_train=3, n_test=2)
    recipe = load_recipe(write_recipe(base / "r.yaml", root), tiny)
    return run(recipe, base / "run").out_dir


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def _reseal(run_dir: Path) -> None:
    """Record the files' current sha256 in run.json, as someone editing a run on purpose would."""
    marker = json.loads((run_dir / MARKER).read_text())
    marker["files"] = {name: file_sha256(run_dir / name) for name in marker["files"] if (run_dir / name).is_file()}
    (run_dir / MARKER).write_text(json.dumps(marker))


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


CLASSES = {
    "an object": {"a": 0},
    "empty": [],
    "one short": ["cats"],
    "one more": ["cats", "dogs", "fish"],
    "numbers": [0, 1],
    "twice": ["cats", "cats"],
    "renamed": ["dogs", "cats"],
}


@pytest.mark.parametrize("case", sorted(CLASSES))
def test_a_resealed_classes_json_of_the_wrong_kind_is_one_line(finished: Path, tiny: Plugins, tmp_path: Path, case: str) -> None:
    run_dir = _copy(finished, tmp_path)
    assert json.loads((run_dir / "classes.json").read_text()) == ["cats", "dogs"]
    (run_dir / "classes.json").write_text(json.dumps(CLASSES[case]))
    _reseal(run_dir)
    with pytest.raises(RunError) as info:
        load_model(run_dir, tiny)
    assert "classes.json" in _one_line(info.value)


def test_a_resealed_model_and_classes_that_disagree_with_the_head_are_one_line(finished: Path, tiny: Plugins, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    names = ["cats", "dogs", "fish"]
    manifest = json.loads((run_dir / "model.json").read_text())
    manifest["classes"] = names
    (run_dir / "model.json").write_text(json.dumps(manifest))
    (run_dir / "classes.json").write_text(json.dumps(names))
    _reseal(run_dir)
    with pytest.raises(RunError) as info:
        load_model(run_dir, tiny)
    assert "head.safetensors" in _one_line(info.value) and "3" in str(info.value)


@pytest.mark.parametrize(("key", "value"), [("crop_size", 60000), ("resize_size", 100000), ("crop_size", 0)])
def test_a_resealed_model_json_with_absurd_image_sizes_is_one_line(finished: Path, tiny: Plugins, tmp_path: Path, key: str, value: int) -> None:
    run_dir = _copy(finished, tmp_path)
    manifest = json.loads((run_dir / "model.json").read_text())
    pre = manifest["pipeline"]["preprocessing"]
    pre[key] = value
    if key == "crop_size" and value > 1:
        pre["resize_size"] = value
    (run_dir / "model.json").write_text(json.dumps(manifest))
    _reseal(run_dir)
    with pytest.raises(RunError) as info:
        load_model(run_dir, tiny)
    assert "model.json" in _one_line(info.value) and key in str(info.value)


def test_the_size_bounds_leave_every_real_backbone_room() -> None:
    from tlkit.contract.preprocessing import MAX_CROP_SIZE, MAX_RESIZE_SIZE, Preprocessing

    Preprocessing(crop_size=1024, resize_size=1024, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)  # type: ignore[arg-type]
    assert MAX_CROP_SIZE >= 1024 and MAX_RESIZE_SIZE >= 2 * MAX_CROP_SIZE


def test_a_predict_on_an_unchanged_copy_still_works(finished: Path, tiny: Plugins, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    model = load_model(run_dir, tiny)
    images = sorted((finished.parent / "data").rglob("*.jpg"))[:2]
    assert predict(model, images, workers=0).probabilities.shape == (2, 2)


def _load_in_a_subprocess(run_dir: Path) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from tiny import TinyPlugin
        from tlkit.contract.plugin_manager import load_plugins
        from tlkit.errors import RunError
        from tlkit.saved.reader import load_model
        try:
            load_model({str(run_dir)!r}, load_plugins(entry_points=False, extra=[TinyPlugin()]))
        except RunError as exc:
            print("refused:", exc)
            sys.exit(2)
        print("loaded")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        ["timeout", "-s", "KILL", str(HANG_LIMIT_S), sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )


SWAPS = [("head.safetensors", "zero"), ("head.safetensors", "fifo"), ("run.json", "fifo"), ("model.json", "zero"), ("classes.json", "fifo"), ("backbone.safetensors", "fifo")]


@pytest.mark.parametrize(("name", "kind"), SWAPS)
def test_a_run_file_swapped_for_a_device_or_fifo_is_refused_without_hanging(finished: Path, tmp_path: Path, name: str, kind: str) -> None:
    run_dir = _copy(finished, tmp_path)
    (run_dir / name).unlink()
    if kind == "zero":
        (run_dir / name).symlink_to("/dev/zero")
    else:
        os.mkfifo(run_dir / name)
    done = _load_in_a_subprocess(run_dir)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr[-2000:])  # 137: it hung until killed
    assert name in done.stdout and ("FIFO" in done.stdout or "device" in done.stdout or "no run.json" in done.stdout), done.stdout


def test_a_run_file_too_large_to_hash_is_refused_before_reading(finished: Path, tiny: Plugins, tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    with (run_dir / "head.safetensors").open("r+b") as fh:
        fh.truncate(20 * 2**30)  # sparse: no disk used, but 20 GiB to hash
    with pytest.raises(RunError) as info:
        load_model(run_dir, tiny)
    assert "head.safetensors" in _one_line(info.value) and "MiB" in str(info.value)




@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,class,split\nx.jpg,cats,train\n", "does not start with the columns split,path,class"),
        ("split,path,class\ntrain,x.jpg\n", "line 2 is not 'split,path,class'"),
        ("split,path,class\ntrain,,cats\n", "line 2 is not 'split,path,class'"),
        (b"split,path,class\ntrain,\xff.jpg,cats\n", "cannot be read"),
    ],
    ids=["header", "short-row", "empty-path", "not-utf8"],
)
def test_a_malformed_split_csv_is_one_line(tmp_path, content, message):
    """``split.csv`` read back (``tlkit.load``, ``tlkit features``): a resealed one of another shape is one line, not a KeyError."""
    from tlkit.errors import RunError
    from tlkit.saved.splits import read_split

    path = tmp_path / "split.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RunError, match=message) as info:
        read_split(path)
    assert "\n" not in str(info.value)
