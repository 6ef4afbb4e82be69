"""Hostile and unlucky cases for the converted-model store (issue 18): an entry is used only for the
identity it was made for, a failure of the disk is never remembered as a verdict on the model, and a
store that cannot be written is still used for reading (converting for the run alone)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from read_only import DROP_OVERRIDE

from tlkit.extract.runtimes import choose_runtime, conversion, torch_forward
from tlkit.extract.runtimes.conversion import MANIFEST, ModelStore

pytest.importorskip("onnxruntime")

SHAPE = (3, 32, 32)


def small(seed: int) -> torch.nn.Module:
    """A tiny frozen CNN whose weights follow ``seed`` (two seeds: two backbones, two store keys)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def choose(model: torch.nn.Module, root: Path, runtime: str = "onnxruntime"):  # type: ignore[no-untyped-def]
    probe = lambda: torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0))  # noqa: E731
    return choose_runtime(
        model, requested=runtime, precision="fp32", device=torch.device("cpu"), identity={"backbone": "small"},
        input_shape=SHAPE, probe=probe, cache_root=root,
    )


def entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / conversion.RUNTIMES_DIR).glob("*") if not p.name.startswith("."))


def assert_own_features(found: object, model: torch.nn.Module) -> None:
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(found.forward(x), torch_forward(model, torch.device("cpu"), "fp32")(x), atol=1e-5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("how", ["copy", "link"])
def test_an_entry_copied_or_linked_over_another_key_is_never_used(tmp_path: Path, how: str) -> None:
    real, random = small(1), small(2)
    choose(real, tmp_path)
    wanted = Path(choose(random, tmp_path).choice.model_path or "").parent
    source = next(e for e in entries(tmp_path) if e != wanted)
    shutil.rmtree(wanted)
    if how == "copy":
        shutil.copytree(source, wanted)  # the other backbone's model, intact digests and all, under this key
    else:
        wanted.symlink_to(source, target_is_directory=True)
    with pytest.raises(ValueError, match="made for another model" if how == "copy" else "link"):
        ModelStore(tmp_path).load(wanted.name)
    found = choose(random, tmp_path)
    assert not found.choice.reused and "not used" in found.choice.note and "rebuilt" in found.choice.note
    assert "\n" not in found.choice.note
    assert_own_features(found, random)  # the true features of its own weights, not the other model's
    assert not wanted.is_symlink() and ModelStore(tmp_path).load(wanted.name) is not None  # rebuilt in place
    assert ModelStore(tmp_path).load(source.name) is not None  # the entry a link pointed to is left as it was
    assert choose(random, tmp_path).choice.reused


@pytest.mark.parametrize("field", ["main", "files"])
def test_a_manifest_naming_files_outside_its_entry_is_refused(tmp_path: Path, field: str) -> None:
    model = small(1)
    folder = Path(choose(model, tmp_path).choice.model_path or "").parent
    manifest = json.loads((folder / MANIFEST).read_text())
    outside = tmp_path / "outside.onnx"
    shutil.copy(folder / manifest["main"], outside)
    if field == "main":
        manifest["main"] = "../../outside.onnx"
    else:
        manifest["files"] = {"../../outside.onnx": manifest["files"][manifest["main"]]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unreadable manifest"):
        ModelStore(tmp_path).load(folder.name)


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _wrapped_enospc(*args: object, **kwargs: object) -> None:
    try:
        _enospc()
    except OSError as exc:
        raise RuntimeError("exporter failed while saving") from exc  # exporters wrap what they meet


@pytest.mark.parametrize("where", ["exporter", "wrapped", "manifest"])
def test_a_full_disk_while_converting_is_not_remembered_as_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    model = small(1)
    with monkeypatch.context() as patch:
        if where == "manifest":
            patch.setattr(conversion, "write_atomic", _enospc)
        else:
            patch.setattr(conversion, "build_files", _enospc if where == "exporter" else _wrapped_enospc)
        found = choose(model, tmp_path)
    note = found.choice.note
    assert found.choice.runtime == "torch" and note.startswith("runtime: torch fp32 (onnxruntime: converting failed (")
    assert "No space left on device" in note and "not remembered" in note and "\n" not in note
    assert entries(tmp_path) == [] and list((tmp_path / conversion.RUNTIMES_DIR).iterdir()) == []  # no verdict, no leftovers
    assert_own_features(found, model)
    again = choose(model, tmp_path)  # space is back: converted now, not refused from a stored verdict
    assert again.choice.runtime == "onnxruntime" and not again.choice.reused


def test_ctrl_c_while_converting_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(conversion, "build_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        choose(small(1), tmp_path)
    assert list((tmp_path / conversion.RUNTIMES_DIR).iterdir()) == []


_READ_ONLY_RUN = DROP_OVERRIDE + textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    from test_hostile_model_store import choose, small, assert_own_features
    if os.geteuid() == 0:
        drop_file_mode_override()
    root = Path({root!r})
    try:
        (root / "runtimes" / "probe").mkdir()
        print("writable"); sys.exit(3)
    except OSError:
        pass
    for seed, runtime in ((2, "onnxruntime"), (3, "auto")):  # 2: an entry copied over its key; 3: no entry at all
        found = choose(small(seed), root, runtime)
        assert found.choice.runtime in ("openvino", "onnxruntime"), found.choice.note
        assert found.choice.model_path is None and not found.choice.reused
        assert_own_features(found, small(seed))
        print(found.choice.note.replace(chr(10), "<newline>"))
    """
)


def test_a_read_only_store_converts_for_the_run_alone(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="tlkit-ro-store-"))  # not under pytest's 0700 tmp folder, which nobody else can enter
    root = base / "cache"
    try:
        choose(small(1), root)
        wanted = Path(choose(small(2), root).choice.model_path or "").parent
        source = next(e for e in entries(root) if e != wanted)
        shutil.rmtree(wanted)
        shutil.copytree(source, wanted)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
            if os.geteuid() == 0:
                os.chown(path, 65534, 65534)
        before = sorted(str(p) for p in root.rglob("*"))
        script = base / "reader.py"
        script.write_text(_READ_ONLY_RUN.format(tests=str(Path(__file__).parent), root=str(root)))
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
        notes = done.stdout.splitlines()
        assert len(notes) == 2 and all("cannot be written" in n and "converted for this run only" in n for n in notes), notes
        assert "made for another model" in notes[0]
        assert sorted(str(p) for p in root.rglob("*")) == before  # nothing written
    finally:
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


_READ_ONLY_RECIPE_RUN = DROP_OVERRIDE + textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from feature_helpers import TinyPlugin
    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.extract.runtimes import stage
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run
    if os.geteuid() == 0:
        drop_file_mode_override()
    stage.AUTO_MIN_IMAGES = 1  # auto converts as for a data set of 100+ images
    recipe = {{
        "name": "ro", "seed": 0, "dataset": {{"root": {data!r}}}, "backbone": {{"name": "tiny_cnn", "weights": "none"}},
        "extract": {{"workers": 0}}, "head": {{"epochs": 5, "eval_every": 5}},
    }}

    class Notes(Observer):
        def note(self, text):
            print("NOTE", text.replace(chr(10), "<newline>"))

    run(resolve(recipe, load_plugins(entry_points=False, extra=[TinyPlugin()])), Path({out!r}), Notes())
    """
)


def test_a_run_on_a_read_only_shared_cache_without_its_converted_model(tmp_path: Path) -> None:
    """The issue's case: the default ``auto`` runtime, a read-only cache holding no converted model, no features."""
    from conftest import make_image_folder

    base = Path(tempfile.mkdtemp(prefix="tlkit-ro-run-"))
    root = base / "cache"
    try:
        data = make_image_folder(base / "data", n_train=4, n_test=2)
        root.mkdir()
        root.chmod(0o555)
        if os.geteuid() == 0:
            os.chown(root, 65534, 65534)
        script = base / "run.py"
        script.write_text(_READ_ONLY_RECIPE_RUN.format(tests=str(Path(__file__).parent), data=str(data), out=str(base / "out")))
        env = {**os.environ, "TLKIT_CACHE_DIR": str(root)}
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
        notes = [line for line in done.stdout.splitlines() if line.startswith("NOTE ")]
        runtime = [n for n in notes if n.startswith("NOTE runtime: ")]
        assert len(runtime) == 1 and "converted for this run only" in runtime[0], notes
        assert any("read-only" in n and "not saved" in n for n in notes), notes
        assert list(root.iterdir()) == []
    finally:
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


def _run(folder: Path, out: Path, seed: int, runtime: str, cache: bool = True) -> tuple[dict, list[str]]:
    from feature_helpers import TinyPlugin

    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins
    from tlkit.recipe.loader import resolve
    from tlkit.run.engine import run

    recipe = {
        "name": "swap", "seed": seed, "dataset": {"root": str(folder)}, "backbone": {"name": "tiny_cnn", "weights": "none"},
        "extract": {"workers": 0, "cache": cache, "runtime": runtime}, "head": {"epochs": 5, "eval_every": 5},
    }
    notes: list[str] = []

    class Notes(Observer):
        def note(self, text: str) -> None:
            notes.append(text)

    result = run(resolve(recipe, load_plugins(entry_points=False, extra=[TinyPlugin()])), out, Notes())
    return json.loads((result.out_dir / "metrics.json").read_text()), notes


def test_a_run_with_a_swapped_entry_gives_its_own_weights_accuracy(image_folder: Path, tmp_path: Path, feature_cache_dir: Path) -> None:
    """Must hold 4 of issue 18: another backbone's converted model copied over this run's key is never used."""
    _run(image_folder, tmp_path / "other", seed=0, runtime="onnxruntime")
    own, _ = _run(image_folder, tmp_path / "own", seed=1, runtime="onnxruntime")
    wanted = Path(own["features"]["runtime"]["model_path"]).parent
    other = next(e for e in entries(feature_cache_dir) if e != wanted)
    shutil.rmtree(wanted)
    shutil.copytree(other, wanted)
    shutil.rmtree(feature_cache_dir / "features")  # so the swapped model, if used, would extract (and cache) every feature
    swapped, notes = _run(image_folder, tmp_path / "swapped", seed=1, runtime="onnxruntime")
    record = swapped["features"]["runtime"]
    assert not record["reused"] and "made for another model" in record["note"] and "rebuilt" in record["note"]
    assert [n for n in notes if n.startswith("runtime: ")] == [record["note"]]
    truth, _ = _run(image_folder, tmp_path / "torch", seed=1, runtime="torch", cache=False)
    assert (swapped["test_accuracy"], swapped["train_accuracy"]) == (truth["test_accuracy"], truth["train_accuracy"])
