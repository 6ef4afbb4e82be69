"""Hostile WebDataset shards and shard sources (issue 18): no command run, nothing read outside its place, bounded, reported."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from conftest import CLASS_COLOURS, make_image, make_image_folder, write_recipe

from tlkit.cli.app import main
from tlkit.errors import DataError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run
from tlkit.sources.shards import make_from_folder, stream


def _load(plugins, train: str, test: str, **options):
    spec = plugins.datasets.get("webdataset")
    return spec.load(spec.options(train=train, test=test, **options))


def _jpg(colour, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (40, 32), tuple(colour)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard(path: Path, members: list[tuple[str, bytes]], links: tuple[tuple[str, str], ...] = ()) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            _add(tar, name, data)
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def _recipe(tmp_path: Path, train: str, test: str, **dataset) -> Path:
    recipe = write_recipe(tmp_path / "w.yaml", tmp_path, dataset={"name": "webdataset", "train": train, "test": test, **dataset})
    data = yaml.safe_load(recipe.read_text())
    del data["dataset"]["root"]
    recipe.write_text(yaml.safe_dump(data))
    return recipe


# 1. pipe: URLs run a shell command: refused unless dataset.allow_pipe is true


def test_a_pipe_url_is_refused_in_one_line_and_runs_nothing(tiny_plugins, tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 10)
    mark = tmp_path / "MARK"
    train = f"pipe:touch {mark}; cat {written.splits['train'][0]}"
    with pytest.raises(DataError, match=r"dataset.train.*pipe:.*runs a command.*allow_pipe"):
        _load(tiny_plugins, train, written.pattern("test"))
    assert not mark.exists()
    for url in ("gs://bucket/train.tar", "hf://x/y.tar", "scp://host/x.tar", "{" + f"{written.splits['train'][0]},pipe:touch {mark}" + "}"):  # schemes webdataset opens by running a program
        with pytest.raises(DataError, match="allow_pipe"):
            _load(tiny_plugins, url, written.pattern("test"))
    recipe = _recipe(tmp_path, train, written.pattern("test"))
    with pytest.raises(SystemExit) as info:
        main(["run", str(recipe), "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "allow_pipe" in err, err  # refused as the recipe is read
    assert not mark.exists() and not (tmp_path / "run").exists()


def test_a_pipe_url_runs_when_the_recipe_allows_it(tiny_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=2, n_test=1)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 10)
    mark = tmp_path / "MARK"
    loaded = _load(tiny_plugins, f"pipe:touch {mark}; cat {written.splits['train'][0]}", written.pattern("test"),
                   classes=str(tmp_path / "shards" / "classes.json"), allow_pipe=True)
    assert mark.exists() and len(loaded.splits["train"]) == 4
    assert len(_load(tiny_plugins, f"file:{written.splits['train'][0]}", written.pattern("test")).splits["train"]) == 4  # file: is a path
    # a run directory is not trusted: tlkit features ignores its recipe's allow_pipe
    classes = str(tmp_path / "shards" / "classes.json")
    recipe = _recipe(tmp_path, f"pipe:touch {mark}; cat {written.splits['train'][0]}", written.pattern("test"), classes=classes, allow_pipe=True)
    run(load_recipe(recipe, tiny_plugins), tmp_path / "run")
    mark.unlink()
    with pytest.raises(SystemExit) as info:
        main(["features", str(tmp_path / "run"), "--out", str(tmp_path / "f.npz")])
    assert info.value.code == 2 and not mark.exists() and not (tmp_path / "f.npz").exists()


# 2. member names confined: absolute, '..' and link members are bad members, never read from the filesystem


def test_absolute_dotdot_and_link_members_are_skipped_and_never_read_from_disk(tiny_plugins, tmp_path, monkeypatch):
    from PIL import Image

    root = make_image_folder(tmp_path / "data", n_train=4, n_test=2)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 100)
    secret = make_image(tmp_path / "outside" / "secret.jpg", (0, 0, 0), (64, 64), 7)
    stem = str(secret.with_suffix(""))
    bad = _shard(tmp_path / "shards" / "bad.tar", [
        (f"{stem}.jpg", _jpg(CLASS_COLOURS[0])), (f"{stem}.cls", b"1"),  # cat bytes labelled dog: a sure mistake
        ("../../evil.jpg", _jpg(CLASS_COLOURS[0])), ("../../evil.cls", b"1"),
        ("sub/../../evil2.jpg", _jpg(CLASS_COLOURS[0])), ("sub/../../evil2.cls", b"1"),
        ("link.cls", b"1"),
    ], links=(("link.jpg", str(secret)),))
    test = "{" + f"{written.splits['test'][0]},{bad}" + "}"
    listed = _load(tiny_plugins, written.pattern("train"), test)
    assert all(str(s.path).startswith(str(s.member.shard)) for s in listed.splits["test"])
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1])
    result = run(load_recipe(_recipe(tmp_path, written.pattern("train"), test), tiny_plugins), tmp_path / "run")
    assert str(secret) not in opened
    reasons = {p.name: b.reason for b in result.bad_images for p in [Path(b.path)]}
    assert len(result.bad_images) == 4, reasons
    assert all("absolute" in r or "'..'" in r or "link" in r for r in reasons.values()), reasons
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'class="thumb"' not in report or "src=" not in report.split('class="thumb"')[1][:10]
    import csv

    with open(tmp_path / "run" / "split.csv", newline="") as fh:
        assert all(Path(row["path"]) != secret and ".." not in Path(row["path"]).parts for row in csv.DictReader(fh))
    assert result.metrics.counts["test"] == 4
    # tlkit features re-lists the shards: the outside file is never extracted
    out = tmp_path / "f.npz"
    with pytest.raises(SystemExit) as info:
        main(["features", str(tmp_path / "run"), "--out", str(out)])
    assert info.value.code == 0
    assert str(secret) not in opened
    import numpy as np

    with np.load(out) as data:
        assert len(data["x_test"]) == 4 and len(data["x_train"]) == 8
        assert not any(str(secret) == p for p in data["paths_test"])
    from tlkit.outputs.report import _thumbnail_uri

    assert _thumbnail_uri(str(secret)) not in report  # what the report embedded before: the outside file, as a thumbnail


# 3. tlkit shards make: links out of the folder not packed, earlier shards cleaned


def test_shards_make_skips_links_out_of_the_folder_and_cleans_its_earlier_shards(tiny_plugins, tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", n_train=6, n_test=1)
    secret = tmp_path / "outside" / "passwd.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"SECRET-BYTES-" * 100)
    os.symlink(secret, root / "train" / "cats" / "zz_link.jpg")
    os.symlink(root / "train" / "cats" / "cats_0.jpg", root / "train" / "dogs" / "inside_link.jpg")  # inside DATA: kept
    out = tmp_path / "shards"
    with pytest.raises(SystemExit) as info:
        main(["shards", "make", str(root), str(out), "--shard-size", "2"])
    assert info.value.code == 0
    said = capsys.readouterr().out
    assert "zz_link.jpg" in said and "outside" in said
    assert all(b"SECRET-BYTES" not in p.read_bytes() for p in out.glob("*.tar"))
    assert len(list(out.glob("train-*.tar"))) == 7  # 13 images, 2 per shard
    unrelated = out / "notes.tar"
    unrelated.write_bytes(b"mine")
    with pytest.raises(SystemExit) as info:
        main(["shards", "make", str(root), str(out), "--shard-size", "100"])
    assert info.value.code == 0
    assert sorted(p.name for p in out.iterdir()) == ["classes.json", "notes.tar", "test-000000.tar", "train-000000.tar"]
    assert len(_load(tiny_plugins, str(out / "train-000000.tar"), str(out / "test-000000.tar")).splits["train"]) == 13


# 5. class names that a line-based file would split


def test_a_class_name_with_a_newline_keeps_its_labels_once_written_as_shards(tiny_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("a\nb", "b", "c"), n_train=2, n_test=1)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 100)
    assert json.loads((tmp_path / "shards" / "classes.json").read_text())["classes"] == ["a\nb", "b", "c"]
    folder = tiny_plugins.datasets.get("imagefolder")
    expected = folder.load(folder.options(root=str(root)))
    loaded = _load(tiny_plugins, written.pattern("train"), written.pattern("test"))
    assert loaded.classes == expected.classes == ("a\nb", "b", "c")
    assert [s.label for s in loaded.splits["train"]] == [s.label for s in expected.splits["train"]]


def test_shards_written_by_0_1_0_with_classes_txt_still_load(tiny_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", classes=("ants", "bees"), n_train=2, n_test=1)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 100)
    (tmp_path / "shards" / "classes.json").unlink()
    (tmp_path / "shards" / "classes.txt").write_text("bees\nants\n")  # 0.1.0's file; an order of its own shows it is read
    assert _load(tiny_plugins, written.pattern("train"), written.pattern("test")).classes == ("bees", "ants")


# 4. member sizes bounded before reading; truncated shards reported


def test_an_oversized_member_is_refused_without_reading_it(tiny_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_MAX_MEMBER_BYTES", "10000")
    shard = _shard(tmp_path / "big.tar", [("a.jpg", _jpg((1, 2, 3))), ("a.cls", b"0"), ("b.jpg", b"\0" * 20_000), ("b.cls", b"0")])
    groups = list(stream([str(shard)]))
    assert [g.name for g in groups] == ["a.jpg", "b.jpg"]
    assert groups[1].data == b"" and "TLKIT_MAX_MEMBER_BYTES" in groups[1].error and groups[0].error == ""


HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])"


def test_a_1_gib_member_stays_well_under_1_5_gb_of_memory(tmp_path):
    shard = tmp_path / "huge.tar"
    info = tarfile.TarInfo("huge.jpg")
    info.size = 2**30
    with open(shard, "wb") as fh:  # a sparse file: the header, then 1 GiB of zeros, then the end of the archive
        fh.write(info.tobuf(tarfile.GNU_FORMAT))
        fh.seek(512 + 2**30 + 1024 - 1)
        fh.write(b"\0")
    code = ("import resource, sys; from tlkit.sources.shards import stream; g = list(stream([sys.argv[1]]));"
            "print(len(g), repr(g[0].error[:40]), " + HWM + ")")  # VmHWM: ru_maxrss also counts the forking parent's peak
    done = subprocess.run([sys.executable, "-c", code, str(shard)], capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 0, done.stderr
    count, _, peak_kib = done.stdout.rsplit(" ", 2)
    assert count.startswith("1") and int(peak_kib) < 1_000_000, done.stdout


def test_a_shard_cut_mid_member_is_reported_and_on_bad_image_applies(tiny_plugins, tmp_path):
    root = make_image_folder(tmp_path / "data", n_train=4, n_test=4)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 100)
    test_shard = written.splits["test"][0]
    data = test_shard.read_bytes()
    with tarfile.open(test_shard) as tar:
        members = tar.getmembers()
    cut = members[len(members) // 2]
    test_shard.write_bytes(data[: cut.offset_data + cut.size // 2])  # inside a member's bytes
    listed = _load(tiny_plugins, written.pattern("train"), written.pattern("test"))
    bad = [s for s in listed.splits["test"] if s.member.sha256 == ""]
    assert len(bad) == 1
    result = run(load_recipe(_recipe(tmp_path, written.pattern("train"), written.pattern("test")), tiny_plugins), tmp_path / "run")
    assert len(result.bad_images) == 1 and "cut short" in result.bad_images[0].reason
    recipe = _recipe(tmp_path, written.pattern("train"), written.pattern("test"))
    data2 = yaml.safe_load(recipe.read_text())
    data2["images"] = {"on_bad_image": "error"}
    recipe.write_text(yaml.safe_dump(data2))
    with pytest.raises(DataError, match="cut short"):
        run(load_recipe(recipe, tiny_plugins), tmp_path / "run2")
    # cut between members (no end-of-archive blocks): reported as well
    test_shard.write_bytes(data[: members[3].offset])
    assert any(g.error for g in stream([str(test_shard)]))


# 7. tlkit features on a WebDataset run


def test_features_of_a_webdataset_run_are_the_runs_features(tiny_plugins, tmp_path):
    import numpy as np

    root = make_image_folder(tmp_path / "data", n_train=3, n_test=2)
    written = make_from_folder(tiny_plugins, root, tmp_path / "shards", 4)
    run(load_recipe(_recipe(tmp_path, written.pattern("train"), written.pattern("test")), tiny_plugins), tmp_path / "run")
    with pytest.raises(SystemExit) as info:
        main(["features", str(tmp_path / "run"), "--out", str(tmp_path / "f.npz")])
    assert info.value.code == 0
    with np.load(tmp_path / "f.npz") as data:
        assert data["x_train"].shape[0] == 6 and data["x_test"].shape[0] == 4


# 6. a brace pattern naming millions of shards fails fast


def test_a_huge_brace_pattern_is_refused_at_once_before_expanding(tiny_plugins, tmp_path):
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(DataError, match="names more than 100000 shards"):
        _load(tiny_plugins, str(tmp_path / "train-{0000000..9999999}.tar"), str(tmp_path / "t.tar"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50_000_000
    from tlkit.sources.shards import expand

    with pytest.raises(DataError, match="more than"):
        expand("x-{0000000..9999999}.tar")
