"""Hostile files among the near-duplicate finder's candidates: each is skipped with a note, never a crash,
and never trusted. Each test first checks the trap is real: the finder would pair the file if it opened it
(or, for the bomb, that PIL really refuses the file)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest
from audit_pictures import copy_of, inputs_for, picture, save
from test_messy_dataset import huge_png

from tlkit.audit.findings import AuditInputs
from tlkit.audit.near_duplicates import find_near_duplicates
from tlkit.extract.decode import BadImage, open_rgb


def _pair_folder(root: Path) -> dict[str, list[tuple[str, int]]]:
    """A picture in train, its mirrored copy in test (a leak), and unrelated others in both."""
    save(picture(1), root / "train/0/original.jpg")
    image, quality = copy_of(picture(1), "flip", random.Random(0))
    save(image, root / "test/0/copy.jpg", quality)
    for i in range(4):
        save(picture(20 + i), root / f"train/1/o{i}.jpg")
        save(picture(40 + i), root / f"test/1/o{i}.jpg")
    return {
        "train": [("train/0/original.jpg", 0), *((f"train/1/o{i}.jpg", 1) for i in range(4))],
        "test": [("test/0/copy.jpg", 0), *((f"test/1/o{i}.jpg", 1) for i in range(4))],
    }


LEAK = ("train/0/original.jpg", "test/0/copy.jpg")


def test_the_trap_s_pair_is_found_when_nothing_is_wrong(tmp_path: Path) -> None:
    inputs = inputs_for(tmp_path, _pair_folder(tmp_path))
    assert [f.paths for f in find_near_duplicates(inputs)] == [LEAK]


def test_a_decompression_bomb_among_the_candidates_is_refused_from_its_header_and_noted(tmp_path: Path) -> None:
    inputs = inputs_for(tmp_path, _pair_folder(tmp_path))
    huge_png(tmp_path / "bomb.png")
    shutil.copyfile(tmp_path / "bomb.png", tmp_path / "test/0/copy.jpg")  # the leak's copy, features kept as they were
    bomb = tmp_path / "test/0/copy.jpg"
    with pytest.raises(BadImage, match="too large to decode safely"):
        open_rgb(bomb)  # the trap is real
    notes: list[str] = []
    assert find_near_duplicates(_with_digest_of(inputs, bomb), notes) == []  # its digest as if the cache had hashed it
    assert len(notes) == 1 and notes[0].startswith("near-duplicates: skipped test image test/0/copy.jpg: too large to decode safely"), notes


def test_a_file_replaced_after_its_features_were_computed_is_not_trusted(tmp_path: Path) -> None:
    """The test image's features (and digest) are of an unrelated picture; its file now holds a copy of a train image."""
    layout = _pair_folder(tmp_path)
    save(picture(99), tmp_path / "test/0/copy.jpg")
    inputs = inputs_for(tmp_path, layout)  # features and digest of the unrelated picture ...
    x = inputs.splits["test"].x.copy()
    x[0] = inputs.splits["train"].x[0]  # ... made near the train image so that the pair is a candidate
    inputs = dataclasses.replace(inputs, splits={**inputs.splits, "test": dataclasses.replace(inputs.splits["test"], x=x)})
    image, quality = copy_of(picture(1), "flip", random.Random(0))
    save(image, tmp_path / "test/0/copy.jpg", quality)  # ... then the file is replaced by a copy
    trusting = inputs_for(tmp_path, layout)
    assert [f.paths for f in find_near_duplicates(trusting)] == [LEAK]  # the trap is real: read as it is now, it pairs
    notes: list[str] = []
    assert find_near_duplicates(inputs, notes) == []
    assert notes == ["near-duplicates: skipped test image test/0/copy.jpg: changed since its features were computed (its sha256 differs), not trusted"]


def test_a_link_to_a_file_outside_the_data_set_s_folder_is_not_opened(tmp_path: Path) -> None:
    root = tmp_path / "data"
    layout = _pair_folder(root)
    outside = tmp_path / "elsewhere" / "secret.jpg"
    outside.parent.mkdir()
    (root / "test/0/copy.jpg").rename(outside)
    (root / "test/0/copy.jpg").symlink_to(outside)
    inputs = inputs_for(root, layout)
    assert [f.paths for f in find_near_duplicates(dataclasses.replace(inputs, root=tmp_path))] == [LEAK]  # the trap is real
    notes: list[str] = []
    assert find_near_duplicates(inputs, notes) == []
    assert notes == ["near-duplicates: skipped test image test/0/copy.jpg: a link to a file outside the data set's folder, not opened"]


def test_a_fifo_put_in_place_of_a_candidate_is_never_opened_for_reading(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the finder checks what the name is first."""
    inputs = inputs_for(tmp_path, _pair_folder(tmp_path))
    (tmp_path / "test/0/copy.jpg").unlink()
    os.mkfifo(tmp_path / "test/0/copy.jpg")
    notes: list[str] = []
    assert find_near_duplicates(inputs, notes) == []  # returns: nothing waited for a writer
    assert notes == ["near-duplicates: skipped test image test/0/copy.jpg: cannot be read (is a FIFO, not a regular file)"]


def test_a_truncated_image_is_skipped_with_its_reason(tmp_path: Path) -> None:
    inputs = inputs_for(tmp_path, _pair_folder(tmp_path))
    path = tmp_path / "test/0/copy.jpg"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(BadImage):
        open_rgb(path)  # the trap is real
    notes: list[str] = []
    assert find_near_duplicates(_with_digest_of(inputs, path), notes) == []
    assert len(notes) == 1 and notes[0].startswith("near-duplicates: skipped test image test/0/copy.jpg: corrupt or truncated image")


def _with_digest_of(inputs: AuditInputs, path: Path) -> AuditInputs:
    """``inputs`` with the first test image's digest taken from ``path`` as it is now (as the cache would have hashed it)."""
    test = inputs.splits["test"]
    return dataclasses.replace(
        inputs, splits={**inputs.splits, "test": dataclasses.replace(test, digests=(hashlib.sha256(path.read_bytes()).hexdigest(), *test.digests[1:]))}
    )
