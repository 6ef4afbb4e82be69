"""Near-duplicates and leaks (issue 19, must-hold 2): copies found across and within splits, look-alikes not.

The pictures are real JPEGs with structure (tests/audit_pictures.py); their features are a colour
histogram of the pixels, which, like a backbone's, puts copies and look-alikes near each other: the
pixel check is what tells them apart. The slow test does the same on ants/bees with Lite0 features.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from audit_pictures import KINDS, copy_of, inputs_for, picture, planted_folder, save
from conftest import HYMENOPTERA
from PIL import Image

from tlkit.audit.fingerprints import dhash_bits, phash_bits
from tlkit.audit.near_duplicates import DEFAULTS, candidate_pairs, find_near_duplicates, settings
from tlkit.audit.nearest import normalised, top_k
from tlkit.errors import RecipeError

REPO = Path(__file__).resolve().parent.parent


def _pairs(findings: list) -> set[frozenset[str]]:
    return {frozenset(f.paths) for f in findings}


def test_copies_placed_across_the_splits_are_found_as_leaks_and_no_original_pairs_with_another(tmp_path: Path) -> None:
    layout, planted = planted_folder(tmp_path, per_kind=5)
    inputs = inputs_for(tmp_path, layout)
    notes: list[str] = []
    findings = find_near_duplicates(inputs, notes)
    found = _pairs(findings)
    for kind in KINDS:
        of_kind = {p for p in planted if any(f"copy-{kind}-" in path for path in p)}
        assert len(of_kind & found) / len(of_kind) >= 0.95, (kind, of_kind - found)
    assert len(found & planted) / len(planted) >= 0.95
    assert found <= planted, f"false pairs: {found - planted}"  # none among the 48 untouched originals either
    assert all(f.kind == "leak" and f.splits == ("train", "test") and f.paths[0].startswith("train/") for f in findings)
    assert notes == []
    assert find_near_duplicates(inputs) == findings  # deterministic


def test_a_copy_within_a_split_is_a_near_duplicate_and_a_different_label_is_shown(tmp_path: Path) -> None:
    save(picture(1), tmp_path / "train/0/a.jpg")
    image, quality = copy_of(picture(1), "flip", random.Random(0))
    save(image, tmp_path / "train/1/a-mirrored.jpg", quality)
    others = [(f"train/{i % 2}/o{i}.jpg", i % 2) for i in range(8)]
    for i, (rel, _) in enumerate(others):
        save(picture(50 + i), tmp_path / rel)
    inputs = inputs_for(tmp_path, {"train": [("train/0/a.jpg", 0), ("train/1/a-mirrored.jpg", 1), *others]})
    (finding,) = find_near_duplicates(inputs)
    assert finding.kind == "near_duplicate" and finding.paths == ("train/0/a.jpg", "train/1/a-mirrored.jpg")
    assert (finding.given_label, finding.suggested_label) == ("a", "b") and "labelled 'a' and 'b'" in finding.detail


def test_a_look_alike_is_a_candidate_by_its_features_but_its_pixels_say_it_is_no_copy(tmp_path: Path) -> None:
    """Same colours, shapes elsewhere: the features alone (a cosine threshold) would pair them."""
    save(picture(7), tmp_path / "train/0/original.jpg")
    save(picture(7, layout=1), tmp_path / "test/0/look-alike.jpg")
    save(picture(8), tmp_path / "test/0/other.jpg")
    inputs = inputs_for(tmp_path, {"train": [("train/0/original.jpg", 0)], "test": [("test/0/look-alike.jpg", 0), ("test/0/other.jpg", 0)]})
    candidates = candidate_pairs(inputs, settings({}))
    cosine = {frozenset(inputs.splits[s].paths[r] for s, r in pair): c for pair, c in candidates.pairs}
    assert cosine[frozenset(("train/0/original.jpg", "test/0/look-alike.jpg"))] > 0.9
    assert find_near_duplicates(inputs) == []
    unchecked = find_near_duplicates(dataclasses.replace(inputs, options={"near_duplicate_max_bits": 128}))
    assert frozenset(("train/0/original.jpg", "test/0/look-alike.jpg")) in _pairs(unchecked)  # what the pixel check removed


def test_byte_identical_files_are_left_to_the_exact_duplicate_finder(tmp_path: Path) -> None:
    save(picture(3), tmp_path / "train/0/a.jpg")
    save(picture(4), tmp_path / "test/0/b.jpg")
    shutil.copyfile(tmp_path / "train/0/a.jpg", tmp_path / "test/0/a-again.jpg")
    inputs = inputs_for(tmp_path, {"train": [("train/0/a.jpg", 0)], "test": [("test/0/a-again.jpg", 0), ("test/0/b.jpg", 0)]})
    assert inputs.splits["train"].digests[0] == inputs.splits["test"].digests[0]
    assert find_near_duplicates(inputs) == []


def test_the_perceptual_hashes_are_imagehash_s_phash_and_dhash_bit_for_bit() -> None:
    imagehash = pytest.importorskip("imagehash")
    for seed in range(20):
        gray = picture(seed).convert("L")
        small = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS))  # the pixels imagehash hashes
        assert int(phash_bits(small[None])[0]) == int(str(imagehash.phash(gray)), 16)
        tiny = np.asarray(gray.resize((9, 8), Image.Resampling.LANCZOS))
        assert int(dhash_bits(tiny[None])[0]) == int(str(imagehash.dhash(gray)), 16)


def test_the_blocked_search_gives_the_full_matrix_s_neighbours() -> None:
    rng = np.random.default_rng(0)
    x = normalised(rng.standard_normal((203, 12)).astype(np.float32))
    x[50] = x[10]  # an exact tie: the lower index first
    index, cosine = top_k(x, x, 5, same=True, entries=300)  # 24 rows a block: nine blocks
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    for row in range(len(x)):
        expected = sorted(range(len(x)), key=lambda j: (-full[row, j], j))[:5]
        assert index[row].tolist() == expected
        assert np.allclose(cosine[row], full[row, expected], atol=1e-6)
    assert index[10, 0] == 50 and index[50, 0] == 10
    assert top_k(x[:3], x[:3], 10, same=True)[0].shape == (3, 2)


def test_the_search_holds_no_n_by_n_matrix() -> None:
    """20,000 images: the full cosine matrix is 1.6 GB; the blocked search stays within a few hundred MB."""
    script = (
        "import numpy as np\n"
        "from tlkit.audit.nearest import normalised, top_k\n"
        "hwm = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])\n"
        "x = normalised(np.random.default_rng(0).standard_normal((20000, 8)).astype(np.float32))\n"
        "before = hwm()\n"
        "index, cosine = top_k(x, x, 10, same=True)\n"
        "print(hwm() - before, index.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True, cwd=REPO).stdout.split(maxsplit=1)
    assert int(out[0]) < 400 * 1024, f"peak grew by {int(out[0]) / 1024:.0f} MB"
    assert out[1].strip() == "(20000, 10)"


@pytest.mark.parametrize(
    ("key", "value"), [("near_duplicate_min_cosine", 2), ("near_duplicate_neighbours", 0), ("near_duplicate_max_bits", "8"), ("near_duplicate_max_pairs", -1)]
)
def test_an_option_out_of_range_is_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(RecipeError, match=f"audit.{key} must be a number from .* not {value!r}"):
        settings({key: value})  # type: ignore[dict-item]
    assert settings({}) == settings(dict(DEFAULTS))


def test_when_candidates_exceed_the_limit_the_most_similar_are_checked_and_a_note_says_so(tmp_path: Path) -> None:
    layout, planted = planted_folder(tmp_path, per_kind=1, originals=8)
    inputs = dataclasses.replace(inputs_for(tmp_path, layout), options={"near_duplicate_max_pairs": 3})
    notes: list[str] = []
    findings = find_near_duplicates(inputs, notes)
    assert len(findings) <= 3 and _pairs(findings) <= planted
    assert len(notes) == 1 and "only the 3 most similar checked (audit.near_duplicate_max_pairs)" in notes[0]


@pytest.mark.slow
def test_copies_of_real_ants_and_bees_photos_are_found_with_lite0_features(tmp_path: Path) -> None:
    """Must-hold 2 on the real photos: 5 copies of each kind across train/test among 200 originals, Lite0 features through tlkit."""
    if not (HYMENOPTERA / "train").is_dir():
        pytest.skip(f"ants/bees data not found at {HYMENOPTERA}")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from audit_duplicates import finder_scores, lite0_inputs, make_copy
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    planted = make_copy(HYMENOPTERA, tmp_path, per_kind=5, seed=0, per_class=50)  # 200 photos: a minute on a busy machine
    result = finder_scores(lite0_inputs(tmp_path), planted, with_bits=False)
    assert result["overall"]["recall"] >= 0.95, result["missed"]
    assert result["false_pairs"] == [] and result["notes"] == []
    assert result["leaks"] == len(planted) == 20


def test_an_empty_split_and_a_lone_image_give_no_pairs_and_no_error(tmp_path: Path) -> None:
    save(picture(1), tmp_path / "train/0/a.jpg")
    inputs = inputs_for(tmp_path, {"train": [("train/0/a.jpg", 0)]})
    empty = dataclasses.replace(inputs.splits["train"], x=np.zeros((0, 64), np.float32), y=np.zeros(0, int), paths=(), files=(), digests=())
    assert find_near_duplicates(dataclasses.replace(inputs, splits={**inputs.splits, "test": empty})) == []


def test_images_inside_shards_are_left_out_of_the_pixel_check_with_one_note(tmp_path: Path) -> None:
    layout, _ = planted_folder(tmp_path, per_kind=1, originals=8)
    inputs = inputs_for(tmp_path, layout)
    test = dataclasses.replace(inputs.splits["test"], files=(None,) * len(inputs.splits["test"].files))
    notes: list[str] = []
    assert find_near_duplicates(dataclasses.replace(inputs, splits={**inputs.splits, "test": test}), notes) == []
    assert len(notes) == 1 and notes[0].endswith("candidate images inside shards were not compared by pixels (no file to open)")
