"""The data audit (issue 19): each finder on synthetic features with known faults, then the audit inside real tiny runs.

Finder tests build features whose faults are known (flipped labels, a far point, a point at the
other class's centre, byte-identical digests) and check that exactly those are found. Run tests use
small generated image folders through the tiny CNN: ``tlkit run`` writes audit.json/audit.csv and the
summary in metrics.json; ``tlkit audit --write-exclusions`` then ``dataset.exclude`` leaves exactly
the listed files out of a rerun, which records them (Must hold 5).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, make_image, write_recipe
from PIL import Image

from tlkit.audit import neighbours
from tlkit.audit.exact_duplicates import find_exact_duplicates
from tlkit.audit.findings import CSV_COLUMNS, KINDS, AuditInputs, Finding, SplitData
from tlkit.audit.label_issues import confident_joint, find_label_issues, label_issue_mask
from tlkit.audit.probabilities import out_of_sample_probabilities
from tlkit.audit.runner import FINDERS, audit
from tlkit.audit.sizes import find_class_sizes, find_image_sizes
from tlkit.audit.summary import summarise
from tlkit.cli.app import main
from tlkit.recipe.audit_settings import AuditSettings


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return int(info.value.code or 0)


def blobs(per_class: int = 40, classes: int = 3, dim: int = 16, seed: int = 0, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs: class c around a random centre at distance ~6 from the others."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return (centres[y] + rng.normal(scale=spread, size=(len(y), dim))).astype(np.float32), y


def split(x: np.ndarray, y: np.ndarray, prefix: str, digests: tuple[str, ...] | None = None) -> SplitData:
    paths = tuple(f"{prefix}/{int(label)}/{i}.jpg" for i, label in enumerate(y))
    return SplitData(x=x, y=y, paths=paths, files=(None,) * len(y), digests=digests or tuple(f"{prefix}-{i}" for i in range(len(y))))


def inputs_for(train: SplitData, test: SplitData | None = None, **kwargs: object) -> AuditInputs:
    splits = {"train": train, **({"test": test} if test is not None else {})}
    classes = tuple(str(c) for c in range(int(max(int(s.y.max()) for s in splits.values())) + 1))
    return AuditInputs(classes=classes, splits=splits, **kwargs)  # type: ignore[arg-type]


def flipped(y: np.ndarray, count: int, classes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    which = rng.choice(len(y), count, replace=False)
    noisy = y.copy()
    noisy[which] = (noisy[which] + 1) % classes
    return noisy, which


# ---- label issues ---------------------------------------------------------------------------------


def test_label_issues_find_the_flipped_labels_and_suggest_the_true_class():
    x, y = blobs()
    noisy, which = flipped(y, 8, 3)
    found = find_label_issues(inputs_for(split(x, noisy, "train")))
    flagged = {int(f.paths[0].split("/")[-1].removesuffix(".jpg")) for f in found}
    assert flagged <= set(which.tolist()) and len(flagged) >= 7  # separable blobs: nothing but flips, and nearly all of them
    for f in found:
        i = int(f.paths[0].split("/")[-1].removesuffix(".jpg"))
        assert f.given_label == str(noisy[i]) and f.suggested_label == str(y[i]) and 0.5 < f.score <= 1.0


def test_clean_labels_give_no_label_issue():
    x, y = blobs()
    assert find_label_issues(inputs_for(split(x, y, "train"))) == []


def test_confident_learning_agrees_with_cleanlab_on_the_same_probabilities():
    filter_ = pytest.importorskip("cleanlab.filter")
    x, y = blobs(spread=3.0)  # overlapping classes: many borderline images, where the two could differ
    noisy, _ = flipped(y, 12, 3)
    probabilities, _ = out_of_sample_probabilities(x, noisy, 3, seed=0)
    ours = label_issue_mask(probabilities, noisy)
    theirs = filter_.find_label_issues(noisy, probabilities)
    assert ours.sum() > 0 and (ours == theirs).all()


def test_confident_joint_by_hand():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1, 1])  # the last is labelled 1 but looks like 0
    # thresholds: t0 = mean(0.9, 0.8) = 0.85, t1 = mean(0.7, 0.8, 0.4) = 0.633; the last image passes neither: not counted
    joint = confident_joint(p, labels)
    assert joint.tolist() == [[2.0, 0.0], [0.0, 3.0]]
    p[4] = [0.9, 0.1]  # now it passes t0: one image labelled 1 is confidently 0
    joint = confident_joint(p, labels)
    assert joint[1, 0] == pytest.approx(1.0) and joint[1].sum() == pytest.approx(3.0)
    assert label_issue_mask(p, labels).tolist() == [False, False, False, False, True]


def test_probabilities_are_out_of_sample_deterministic_and_scale_free():
    x, y = blobs()
    noisy, which = flipped(y, 6, 3)
    a, l2a = out_of_sample_probabilities(x, noisy, 3, seed=3)
    b, l2b = out_of_sample_probabilities(x, noisy, 3, seed=3)
    assert (a == b).all() and l2a == l2b
    assert (a[which].argmax(1) != noisy[which]).all()  # a model that saw the flipped label would agree with it
    tiny, _ = out_of_sample_probabilities(x * 1e-9, noisy, 3, seed=3, l2=l2a)  # a random-weight backbone's scale
    assert np.abs(tiny - a).max() < 1e-3


# ---- duplicates, neighbours, sizes ----------------------------------------------------------------


def test_byte_copies_across_train_and_test_are_leaks_and_within_a_split_duplicates():
    x, y = blobs(per_class=4, classes=2)
    train = split(x, y, "train", digests=("a", "b", "c", "d", "a", "e", "f", "g"))
    test = split(x[:3], y[:3], "val", digests=("h", "d", "i"))
    found = find_exact_duplicates(inputs_for(train, test))
    kinds = sorted((f.kind, f.paths, f.splits) for f in found)
    assert kinds == [
        ("exact_duplicate", ("train/0/0.jpg", "train/1/4.jpg"), ("train", "train")),
        ("leak", ("train/0/3.jpg", "val/0/1.jpg"), ("train", "test")),
    ]
    assert next(f for f in found if f.kind == "exact_duplicate").suggested_label == "0"  # labelled 0 and 1: the first's label is suggested


def test_an_image_far_from_every_class_is_an_outlier_and_only_it():
    x, y = blobs(per_class=30, classes=2, dim=8)
    x = np.abs(x)  # post-ReLU features, as pooled CNN features are
    far = np.zeros((1, 8), np.float32)
    far[0, 0] = -50.0  # pointing away from every centre
    found = neighbours.find_outliers(inputs_for(split(np.concatenate([x, far]), np.append(y, 1), "train")))
    assert [f.paths[0] for f in found] == ["train/1/60.jpg"]
    assert "nearest images" in found[0].detail


def test_an_image_at_another_class_centre_is_nearer_other_class():
    x, y = blobs(per_class=30, classes=3)
    x[5] = x[y == 2].mean(0)  # labelled 0, sitting at class 2's centre
    found = neighbours.find_nearer_other_class(inputs_for(split(x, y, "train")))
    hit = [f for f in found if f.paths[0] == "train/0/5.jpg"]
    assert hit and hit[0].given_label == "0" and hit[0].suggested_label == "2"
    assert len(found) <= 3  # the separable rest is not flagged


def test_blocked_nearest_neighbours_equal_the_full_matrix(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(97, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -2)
    expected = (1 - np.sort(sims, axis=1)[:, ::-1][:, :4]).mean(1)
    monkeypatch.setattr(neighbours, "BLOCK_FLOATS", 97 * 7)  # blocks of 7 rows
    assert np.allclose(neighbours.knn_distance(x, 4), expected, atol=1e-5)
    rows = np.array([3, 50, 96])
    assert np.allclose(neighbours.knn_distance(x, 4, rows), expected[rows], atol=1e-5)


def test_class_sizes_flag_a_missing_and_a_tiny_class():
    x, y = blobs(per_class=20, classes=3)
    y = y.copy()
    y[y == 2] = 0
    y[:1] = 2  # class 2: one image in train
    test = split(x[:10], np.zeros(10, np.int64), "val")  # classes 1 and 2 missing from test
    found = find_class_sizes(inputs_for(split(x, y, "train"), test))
    assert sorted((f.splits[0], f.given_label) for f in found) == [("test", "1"), ("test", "2"), ("train", "2")]


def test_image_sizes_come_from_headers(tmp_path):
    sizes = {"tiny.png": (12, 40), "long.png": (600, 100), "fine.png": (64, 48)}
    files = []
    for name, size in sizes.items():
        Image.new("RGB", size).save(tmp_path / name)
        files.append(tmp_path / name)
    data = SplitData(x=np.zeros((3, 2), np.float32), y=np.zeros(3, np.int64), paths=tuple(sizes), files=tuple(files), digests=("a", "b", "c"))
    found = find_image_sizes(AuditInputs(classes=("a",), splits={"train": data}))
    assert {f.paths[0]: f.detail.split(":")[0] for f in found} == {"tiny.png": "tiny", "long.png": "aspect ratio 6.0"}


# ---- the whole audit ------------------------------------------------------------------------------


def test_audit_ranks_summarises_and_writes_json_and_csv(tmp_path):
    x, y = blobs(per_class=20, classes=2)
    noisy, _ = flipped(y, 3, 2)
    test_digests = ("train-0", *(f"t{i}" for i in range(1, 10)))  # test image 0 is a byte copy of train image 0
    test = split(x[:10], y[:10], "val", digests=test_digests)
    predictions = y[:10].copy()
    predictions[1] = 1  # one wrong answer on a clean test image
    inputs = inputs_for(split(x, noisy, "train"), test, seed=4, test_predictions=predictions)
    report = audit(inputs)
    assert [f.kind for f in report.findings][:4] == ["leak", "label_issue", "label_issue", "label_issue"]
    assert report.summary["leaked_test_images"] == 1 and report.summary["label_issues"] == 3
    assert report.summary["test_accuracy"] == pytest.approx(0.9) and report.summary["test_accuracy_without_leaked"] == pytest.approx(8 / 9)
    assert report.lines()[0] == "1 test image has a copy in train: accuracy without it 88.9% (90.0% with)"
    assert report.lines()[1] == "3 training labels look wrong: see audit.csv"
    assert audit(inputs).findings == report.findings  # deterministic for a seed
    report.write(tmp_path)
    data = json.loads((tmp_path / "audit.json").read_text())
    assert data["format"] == 1 and data["classes"] == ["0", "1"] and data["counts"]["label_issue"] == 3
    assert set(data["timings_s"]) == {f.__name__.removeprefix("find_") for f in FINDERS}
    rows = list(csv.DictReader((tmp_path / "audit.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == len(report.findings)
    assert rows[0]["kind"] == "leak" and rows[0]["other_path"] == "val/0/0.jpg"


def test_leaks_from_any_finder_count_in_the_accuracy_without_leaked():
    x, y = blobs(per_class=5, classes=2)
    test = split(x[:4], y[:4], "val")
    inputs = inputs_for(split(x, y, "train"), test, test_predictions=np.array([0, 1, 0, 0]))  # test 1 is wrong
    near = Finding(kind="leak", paths=("train/0/3.jpg", "val/0/1.jpg"), splits=("train", "test"), score=0.97, detail="near-duplicate")
    summary = summarise(inputs, [near])
    assert summary["test_accuracy"] == 0.75 and summary["test_accuracy_without_leaked"] == 1.0
    assert summary["counts"]["leak"] == 1 and set(summary["counts"]) == set(KINDS)


# ---- inside runs ----------------------------------------------------------------------------------


def leaky_folder(root: Path) -> Path:
    """Two colour classes; a byte copy of a test image sits in train under another name."""
    from conftest import make_image_folder

    make_image_folder(root, n_train=8, n_test=4)
    shutil.copyfile(root / "val" / "cats" / "cats_1.jpg", root / "train" / "cats" / "copy.jpg")
    make_image(root / "train" / "dogs" / "tiny.jpg", (40, 200, 40), size=(8, 8), seed=5)
    return root


def test_a_run_writes_the_audit_and_its_summary(tiny_plugins, tmp_path, capsys):
    root = leaky_folder(tmp_path / "data")
    recipe = write_recipe(tmp_path / "r.yaml", root)
    assert cli("run", str(recipe), "--out", str(tmp_path / "run")) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    summary = metrics["audit"]
    assert summary["leaked_test_images"] == 1 and summary["file"] == "audit.json"
    assert summary["test_accuracy"] == metrics["test_accuracy"] and summary["test_accuracy_without_leaked"] is not None
    assert re.search(r"audit: 1 test image has a copy in train: accuracy without it [\d.]+% \([\d.]+% with\)", out)
    found = json.loads((tmp_path / "run" / "audit.json").read_text())["findings"]
    assert {"kind": "leak", "paths": ["train/cats/copy.jpg", "val/cats/cats_1.jpg"]}.items() <= found[0].items()
    assert any(f["kind"] == "image_size" and f["paths"] == ["train/dogs/tiny.jpg"] for f in found)
    assert "audit" in metrics["timings_s"]


def test_audit_false_leaves_no_audit(tiny_plugins, image_folder, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    assert cli("run", str(recipe), "--out", str(tmp_path / "run"), "--set", "audit=false") == 0
    assert not (tmp_path / "run" / "audit.json").exists()
    assert "audit" not in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_write_exclusions_then_exclude_leaves_exactly_those_files_out(tiny_plugins, tmp_path, capsys):
    root = leaky_folder(tmp_path / "data")
    recipe = write_recipe(tmp_path / "r.yaml", root)
    exclusions = tmp_path / "exclude.txt"
    assert cli("audit", str(recipe), "--out", str(tmp_path / "audit"), "--write-exclusions", str(exclusions), "--kinds", "leak,image_size") == 0
    assert "1 test image has a copy in train" in capsys.readouterr().out
    listed = [line for line in exclusions.read_text().splitlines() if line and not line.startswith("#")]
    assert listed == ["train/cats/copy.jpg", "train/dogs/tiny.jpg"]  # the train copy of the leak; the tiny image
    assert cli("run", str(recipe), "--out", str(tmp_path / "rerun"), "--set", f"dataset.exclude={exclusions}") == 0
    rows = list(csv.DictReader((tmp_path / "rerun" / "split.csv").open()))
    before = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    after = {Path(r["path"]).relative_to(root).as_posix() for r in rows}
    assert before - after == set(listed)
    recorded = list(csv.DictReader((tmp_path / "rerun" / "excluded.csv").open()))
    assert sorted(r["path"] for r in recorded) == listed and {r["split"] for r in recorded} == {"train"}
    assert yaml.safe_load((tmp_path / "rerun" / "recipe.yaml").read_text())["dataset"]["exclude"] == str(exclusions)
    assert json.loads((tmp_path / "rerun" / "metrics.json").read_text())["audit"]["leaked_test_images"] == 0


def test_audit_of_a_finished_run_uses_its_predictions(tiny_plugins, tmp_path, capsys):
    root = leaky_folder(tmp_path / "data")
    recipe = write_recipe(tmp_path / "r.yaml", root)
    assert cli("run", str(recipe), "--out", str(tmp_path / "run"), "--set", "audit.enabled=false") == 0
    capsys.readouterr()
    assert cli("audit", str(tmp_path / "run"), "--out", str(tmp_path / "again")) == 0
    summary = json.loads((tmp_path / "again" / "audit.json").read_text())["summary"]
    assert summary["leaked_test_images"] == 1
    assert summary["test_accuracy"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"]


def test_auditing_a_run_in_place_does_not_block_a_rerun_into_it(tiny_plugins, image_folder, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", image_folder)
    assert cli("run", str(recipe), "--out", str(tmp_path / "run"), "--set", "audit=false") == 0
    assert cli("audit", str(tmp_path / "run")) == 0
    assert (tmp_path / "run" / "audit.json").is_file()  # written into the run, which did not record it
    assert cli("run", str(recipe), "--out", str(tmp_path / "run"), "--set", "audit=false") == 0, capsys.readouterr().err
    assert not (tmp_path / "run" / "audit.json").exists()


def test_every_audit_key_is_documented():
    text = (REPO / "docs" / "recipes.md").read_text()
    section = text[text.index("## `audit`\n") :]
    section = section[: section.index("\n## ", 1)]
    missing = [f.name for f in dataclasses.fields(AuditSettings) if f"| `{f.name}` |" not in section]
    assert not missing, f"docs/recipes.md's audit section lacks {missing}"
    assert "| `exclude` |" in text and "`dataset.exclude`" in text


@pytest.mark.slow
def test_must_hold_1_on_ants_and_bees_with_ten_percent_of_labels_flipped(plugins, hymenoptera):
    """Lite0 features of the real photos, 10% of training labels flipped (seed 0): recall >= 0.8 at precision >= 0.6."""
    from tlkit.recipe.loader import resolve
    from tlkit.run import stages
    from tlkit.run.audit_stage import run_inputs

    recipe = resolve({"dataset": {"root": str(hymenoptera)}, "backbone": {"name": "efficientnet_lite0"}}, plugins)
    prepared = stages.prepare(recipe)
    inputs = run_inputs(prepared, stages.extract(prepared))
    train = inputs.splits["train"]
    rng = np.random.default_rng(0)
    which = rng.choice(len(train.y), int(round(0.1 * len(train.y))), replace=False)
    noisy = train.y.copy()
    noisy[which] = 1 - noisy[which]
    found = find_label_issues(dataclasses.replace(inputs, splits={"train": dataclasses.replace(train, y=noisy)}))
    flagged = {f.paths[0] for f in found}
    truth = {train.paths[i] for i in which}
    assert len(flagged & truth) >= 0.8 * len(truth) and len(flagged & truth) >= 0.6 * len(flagged)
