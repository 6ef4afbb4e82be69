"""Hostile and unlucky cases for the feature cache: damage is detected and never used, and no writer
loses another's work. Each test first checks that the bad case was really produced (the damaged bytes
still parse as a chunk, the disk really was full, ...), then that tlkit detects or recovers from it."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from feature_helpers import TINY_IDENTITY, TINY_PRE, TinyCNN
from read_only import DROP_OVERRIDE as _DROP_OVERRIDE
from safetensors import safe_open

from tlkit.errors import OutputError
from tlkit.extract import cache
from tlkit.extract.cache import FeatureStore, FileHashes, hash_files, open_store
from tlkit.extract.features import extract, extract_cached, prepare_model

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def model() -> torch.nn.Module:
    return prepare_model(TinyCNN(), torch.device("cpu"))


@pytest.fixture
def paths(tmp_path: Path) -> list[Path]:
    return sorted(make_image_folder(tmp_path / "data", n_train=3, n_test=1).rglob("*.jpg"))  # 8 images


def _store(feature_dim: int | None = None) -> FeatureStore:
    return open_store(TINY_IDENTITY, feature_dim=feature_dim)


def _data_offset(chunk: Path) -> int:
    (header_len,) = struct.unpack("<Q", chunk.read_bytes()[:8])
    return 8 + header_len


def _raw_tensors(chunk: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(chunk), framework="pt") as fh:
        return {k: fh.get_tensor(k).clone() for k in fh.keys()}


def _filled(model: torch.nn.Module, paths: list[Path]) -> tuple[FeatureStore, torch.Tensor]:
    store = _store()
    first = extract_cached(model, paths, TINY_PRE, store, batch_size=4, workers=0, chunk_images=4)
    assert first.extracted == len(paths) and len(store.chunks()) == 2
    return store, first.features


def _recovers(
    model: torch.nn.Module, paths: list[Path], expected: torch.Tensor, damaged: Path, *, lost: int = 4, feature_dim: int | None = None
) -> FeatureStore:
    """A fresh store re-extracts exactly the damaged chunk's images and gives the original features."""
    store = _store(feature_dim)
    again = extract_cached(model, paths, TINY_PRE, store, batch_size=4, workers=0, chunk_images=4)
    assert torch.equal(again.features, expected)
    assert (again.cached, again.extracted) == (len(paths) - lost, lost)
    notes = store.notes()
    assert len(notes) == 1 and damaged.name in notes[0] and "\n" not in notes[0], notes
    return store


@pytest.mark.parametrize("how", ["bit flip", "nan", "zeroed vector"])
def test_damaged_chunk_data_is_detected_dropped_and_re_extracted(model: torch.nn.Module, paths: list[Path], how: str) -> None:
    store, expected = _filled(model, paths)
    chunk = store.chunks()[0]
    before = _raw_tensors(chunk)
    data = bytearray(chunk.read_bytes())
    start = _data_offset(chunk)
    if how == "bit flip":
        data[start + 4 * 5 + 2] ^= 0x10  # one bit of the sixth float of the first vector
    elif how == "nan":
        data[start + 20 : start + 24] = struct.pack("<f", float("nan"))
    else:
        data[start : start + 64] = bytes(64)  # one whole vector (16 floats) zeroed
    chunk.write_bytes(bytes(data))
    after = _raw_tensors(chunk)  # the bad case: it still reads as a chunk, with other numbers
    assert after.keys() == before.keys() and sum(not torch.equal(after[k], before[k]) for k in before) == 1
    assert sum(int(torch.isnan(t).sum()) for t in after.values()) == (1 if how == "nan" else 0)
    _recovers(model, paths, expected, chunk)
    rewritten = _raw_tensors(chunk)  # the re-extraction wrote the same chunk again, whole
    assert all(torch.equal(rewritten[k], before[k]) for k in before)


def test_chunk_with_shorter_vectors_and_a_valid_checksum_is_refused(model: torch.nn.Module, paths: list[Path]) -> None:
    store, expected = _filled(model, paths)
    victim = store.chunks()[0]
    short = {name: t[:-3].clone() for name, t in _raw_tensors(victim).items()}
    victim.unlink()
    rewritten = store.write(short)  # a chunk that is self-consistent, but of the wrong length
    assert rewritten is not None and next(iter(_raw_tensors(rewritten).values())).shape == (13,)
    _recovers(model, paths, expected, rewritten, feature_dim=16)  # the engine knows the backbone's dimension


def test_without_the_dimension_the_length_most_features_have_wins(model: torch.nn.Module, paths: list[Path]) -> None:
    store, expected = _filled(model, paths)
    victim = store.chunks()[0]
    tensors = _raw_tensors(victim)
    victim.unlink()
    first, *rest = sorted(tensors)
    store.write({name: tensors[name] for name in rest})
    short = store.write({first: tensors[first][:-3].clone()})
    assert short is not None
    _recovers(model, paths, expected, short, lost=1)


def test_damaged_chunk_header_is_dropped(model: torch.nn.Module, paths: list[Path]) -> None:
    store, expected = _filled(model, paths)
    chunk = store.chunks()[1]
    data = bytearray(chunk.read_bytes())
    index = re.search(rb'"sha256"\s*:\s*"', bytes(data)).end()  # type: ignore[union-attr]
    data[index] = ord("0") if data[index] != ord("0") else ord("1")  # one hex digit of the recorded checksum
    chunk.write_bytes(bytes(data))
    assert len(_raw_tensors(chunk)) == 4  # still a readable safetensors file
    _recovers(model, paths, expected, chunk)


def test_damaged_hash_index_is_detected_and_files_are_hashed_again(paths: list[Path], feature_cache_dir: Path) -> None:
    truth = hash_files(paths)
    (journal,) = (feature_cache_dir / cache.HASH_DIR).glob("*.json")
    body = json.loads(journal.read_text())
    victim = str(paths[0].resolve())
    wrong = "f" * 64
    body["entries"][victim][3] = wrong  # a plausible, wrong digest: used as is, it would fetch another image's features
    journal.write_text(json.dumps(body))
    notes: list[str] = []
    assert hash_files(paths, notes=notes) == truth
    assert len(notes) == 1 and journal.name in notes[0] and "checksum" in notes[0]
    assert not journal.exists()  # dropped; the rehash wrote a good one
    assert FileHashes(feature_cache_dir).entries[victim][3] == truth[0]


def test_per_writer_hash_index_keeps_every_writers_work(paths: list[Path], feature_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two "ranks" that loaded the index before either saved, as concurrent processes do.
    first, second = FileHashes(feature_cache_dir), FileHashes(feature_cache_dir)
    half = len(paths) // 2
    for p in paths[:half]:
        first.sha256(p)
    for p in paths[half:]:
        second.sha256(p)
    first.save()
    second.save()  # with one shared file rewritten whole, this would have dropped the first half
    merged = FileHashes(feature_cache_dir).entries
    assert set(merged) == {str(p.resolve()) for p in paths}
    # Compaction merges every file it read before deleting it: still nothing lost, fewer files.
    monkeypatch.setattr(cache, "COMPACT_AT", 2)
    extra = paths[0].parent / "extra.jpg"
    shutil.copy(paths[0], extra)
    third = FileHashes(feature_cache_dir)
    third.sha256(extra)
    third.save()
    assert len(list((feature_cache_dir / cache.HASH_DIR).glob("*.json"))) == 1
    assert set(FileHashes(feature_cache_dir).entries) == {str(p.resolve()) for p in [*paths, extra]}


_RANK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tlkit.extract.cache import hash_files
    paths = sorted(Path(sys.argv[1]).rglob("*.jpg"))
    rank, world = int(sys.argv[2]), int(sys.argv[3])
    hash_files(paths[rank::world])
    """
)


def test_concurrent_processes_each_keep_their_hashes(tmp_path: Path, feature_cache_dir: Path) -> None:
    folder = make_image_folder(tmp_path / "many", n_train=10, n_test=5)
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    env = {**os.environ, "TLKIT_CACHE_DIR": str(feature_cache_dir)}
    procs = [subprocess.Popen([sys.executable, str(script), str(folder), str(r), "2"], env=env) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    entries = FileHashes(feature_cache_dir).entries
    assert set(entries) == {str(p.resolve()) for p in folder.rglob("*.jpg")}


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_cache_files_and_folders_honour_the_umask(model: torch.nn.Module, paths: list[Path], feature_cache_dir: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        store, _ = _filled(model, paths)
    finally:
        os.umask(old)
    files = [*store.chunks(), store.path / cache.META, *(feature_cache_dir / cache.HASH_DIR).glob("*.json")]
    folders = [store.path, store.path.parent, feature_cache_dir / cache.HASH_DIR]
    assert {_mode(f) for f in files} == {0o666 & ~mask}, [(f.name, oct(_mode(f))) for f in files]
    assert {_mode(d) for d in folders} == {0o777 & ~mask}


_READER = _DROP_OVERRIDE + textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    from feature_helpers import TINY_IDENTITY, TINY_PRE, TinyCNN
    from tlkit.extract.cache import open_store
    from tlkit.extract.features import extract_cached, prepare_model
    if os.geteuid() == 0:
        drop_file_mode_override()
    paths = sorted(Path({folder!r}).rglob("*.jpg"))
    try:
        open(Path({cache!r}) / "probe", "w")
        print("writable"); sys.exit(3)
    except OSError:
        pass
    store = open_store(TINY_IDENTITY)
    result = extract_cached(prepare_model(TinyCNN(), torch.device("cpu")), paths, TINY_PRE, store, batch_size=4, workers=0)
    torch.save(result.features, {out!r})
    print(result.cached, result.extracted, store.read_only)
    """
)


def test_read_only_populated_cache_is_used_for_reading(model: torch.nn.Module) -> None:
    base = Path(tempfile.mkdtemp(prefix="tlkit-ro-"))
    try:
        folder = make_image_folder(base / "data", n_train=3, n_test=1)
        root = base / "cache"
        env = {**os.environ, "TLKIT_CACHE_DIR": str(root)}
        paths = sorted(folder.rglob("*.jpg"))
        old = os.umask(0o022)
        try:
            store = FeatureStore(root, _store().identity)
            expected = extract_cached(model, paths, TINY_PRE, store, batch_size=4, workers=0).features
            hash_files(paths, root)
        finally:
            os.umask(old)
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)  # no one may write
            if os.geteuid() == 0:
                os.chown(path, 65534, 65534)  # filled by another user (nobody): not even its timestamps are ours to touch
        script, out = base / "reader.py", base / "features.pt"
        script.write_text(_READER.format(tests=str(TESTS), folder=str(folder), cache=str(root), out=str(out)))
        out.touch()
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.split() == [str(len(paths)), "0", "True"]
        assert torch.equal(torch.load(out), expected)
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


_FULL = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    sys.path.insert(0, {tests!r})
    from feature_helpers import TINY_IDENTITY
    from tlkit.extract.cache import open_store
    from tlkit.errors import OutputError
    store = open_store(TINY_IDENTITY)
    store.write({{"a" * 64: torch.ones(16)}})
    try:
        store.write({{f"{{i:064x}}": torch.randn(4096) for i in range(64)}})  # 1 MiB: more than the disk holds
    except OutputError as exc:
        print("ERROR", exc)
    print("chunks", len(store.chunks()), "tmp", len(list(store.path.glob(".tmp-*"))))
    print("kept", store.lookup(["a" * 64])["a" * 64].sum().item())
    """
)


def test_a_full_disk_in_the_cache_is_one_line_and_keeps_what_was_written(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small private tmpfs")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a private tmpfs here (needs CAP_SYS_ADMIN)")
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "full.py"
    script.write_text(_FULL.format(tests=str(TESTS)))
    env = {**os.environ, "TLKIT_CACHE_DIR": str(mount / "cache")}
    shell = f"mount -t tmpfs -o size=512k tmpfs {mount} && {sys.executable} {script}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", shell], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    error = next(line for line in lines if line.startswith("ERROR"))
    assert "No space left on device" in error and "free some disk space" in error and str(mount / "cache") in error
    assert "chunks 1 tmp 0" in lines and "kept 16.0" in lines


def test_output_error_is_raised_for_an_unwritable_new_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(OutputError, match="cannot write the feature cache"):
        FeatureStore(blocker, _store().identity)


def test_features_from_a_fresh_extraction_match_after_every_recovery(model: torch.nn.Module, paths: list[Path]) -> None:
    """The reference the recoveries above compare with is itself the uncached extraction."""
    _, cached = _filled(model, paths)
    assert torch.equal(cached, extract(model, paths, TINY_PRE, workers=0).features)
