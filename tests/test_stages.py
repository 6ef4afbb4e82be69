"""Each stage of a run on its own, from Python; the image pipeline record end to end (run -> predict)."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest
import torch
from conftest import CLASS_COLOURS, make_image_folder
from PIL import Image
from tiny_runs import ARCH, make_weights

from tlkit.errors import DataError, RecipeError
from tlkit.extract.pipeline import ImagePipeline
from tlkit.recipe.loader import resolve
from tlkit.run import stages
from tlkit.run.engine import run
from tlkit.run.write import write
from tlkit.saved.reader import image_files, load_model, predict
from tlkit.saved.run_directory import RunDirectory


def _recipe(plugins, root: Path, **sections):
    data = {
        "name": "stages",
        "dataset": {"root": str(root)},
        "backbone": {"name": "tiny_cnn"},
        "extract": {"workers": 0, "batch_size": 4},
        "head": {"name": "linear", "epochs": 30, "lr": 0.1, "eval_every": 10},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return resolve(data, plugins)


def test_each_stage_on_its_own(tiny_plugins, image_folder: Path, tmp_path: Path) -> None:
    recipe = _recipe(tiny_plugins, image_folder)
    prepared = stages.prepare(recipe)
    assert prepared.classes == ["cats", "dogs"] and prepared.pipeline.preprocessing.crop_size == 32
    assert not prepared.backbone.model.training and prepared.device.type == "cpu"

    features = stages.extract(prepared)
    assert {s: len(f) for s, f in features.features.items()} == {"train": 12, "test": 6}
    assert features.extracted == 18 and features.cached == 0 and features.feature_dim == 8
    assert [s.path for s in features.samples["test"]] == [s.path for s in prepared.dataset.splits["test"]]
    again = stages.extract(prepared)  # the cache answers the second time, with the same numbers
    assert again.cached == 18 and again.extracted == 0
    assert torch.equal(again.features["train"].x, features.features["train"].x)

    trained = stages.fit(prepared, features)
    assert len(trained.history) == 3 and not trained.module.training
    evaluation = stages.evaluate(prepared, features, trained, {"total": 1.0})
    assert evaluation.metrics.counts == {"train": 12, "test": 6} and evaluation.metrics.test_accuracy == 1.0
    assert len(evaluation.test_rows) == 6 and evaluation.errors == []

    run_dir = RunDirectory(tmp_path / "out")
    write(run_dir, prepared, features, trained, evaluation)
    final = run_dir.commit({"complete": True})
    assert json.loads((final / "metrics.json").read_text()) == json.loads(json.dumps(evaluation.metrics.to_dict()))
    assert load_model(final, tiny_plugins).classes == ["cats", "dogs"]


def test_shards_are_disjoint_and_complete(tiny_plugins, tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", n_train=5, n_test=4)
    prepared = stages.prepare(_recipe(tiny_plugins, root, extract={"cache": False}))
    whole = stages.extract(prepared)
    parts = [stages.extract(prepared, shard=stages.Shard(rank, 3)) for rank in range(3)]
    for split in ("train", "test"):
        paths = [s.path for part in parts for s in part.samples[split]]
        assert sorted(paths) == sorted(s.path for s in whole.samples[split]) and len(set(paths)) == len(paths)
        by_path = {s.path: row for s, row in zip(whole.samples[split], whole.features[split].x)}
        for part in parts:
            for sample, row in zip(part.samples[split], part.features[split].x):
                assert torch.allclose(row, by_path[sample.path], atol=1e-6)
    with pytest.raises(ValueError):
        stages.Shard(3, 3)


def _rgba_folder(root: Path, per_class: int = 5) -> Path:
    """Half-transparent PNGs: the colour under the transparent half decides every feature."""
    rng = random.Random(0)
    for split, count in (("train", per_class), ("val", 3)):
        for index, name in enumerate(("reds", "greens")):
            for i in range(count):
                r, g, b = CLASS_COLOURS[index]
                image = Image.new("RGBA", (40, 40), (r, g, b, 255))
                for x in range(0, 40, 2):
                    for y in range(rng.randrange(8, 30), 40):
                        image.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256), rng.randrange(0, 120)))
                (root / split / name).mkdir(parents=True, exist_ok=True)
                image.save(root / split / name / f"{name}_{i}.png")
    return root


def test_predict_decodes_with_the_runs_own_background(plugins, tmp_path: Path) -> None:
    """A run on RGBA PNGs composited on black: predict must use black too, not the default white."""
    root = _rgba_folder(tmp_path / "data")
    weights = make_weights(tmp_path / "w.pth")
    recipe = resolve(
        {
            "dataset": {"root": str(root)},
            "images": {"background": [0, 0, 0]},
            "backbone": {"name": f"timm:{ARCH}", "weights": str(weights)},
            "extract": {"workers": 0, "cache": False},
            "head": {"name": "logreg"},
        },
        plugins,
    )
    out = run(recipe, tmp_path / "run").out_dir
    model = load_model(out, plugins)
    assert model.pipeline.background == (0, 0, 0)
    assert json.loads((out / "model.json").read_text())["pipeline"]["background"] == [0, 0, 0]
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    result = predict(model, [Path(r["path"]) for r in rows], workers=0)
    recorded = torch.tensor([float(r["confidence"]) for r in rows])
    assert (result.probabilities.max(1).values - recorded).abs().max() <= 1e-6  # CSV rounds to 6 places
    # The bad case is real: decoding these files on white gives other probabilities.
    white = predict(_with_background(model, (255, 255, 255)), [Path(r["path"]) for r in rows], workers=0)
    # (logreg standardises its features, so the gap is small, but far above float noise: equal decodes agree to 1e-6)
    assert (white.probabilities - result.probabilities).abs().max() > 2e-5


def _with_background(model, colour):
    import dataclasses

    decoding = dataclasses.replace(model.pipeline.decoding, background=colour)
    return dataclasses.replace(model, pipeline=dataclasses.replace(model.pipeline, decoding=decoding))


def test_pipeline_record_round_trips_and_rejects_junk() -> None:
    from tlkit.contract.preprocessing import Preprocessing
    from tlkit.extract.pipeline import ImageSettings

    pipeline = ImagePipeline(ImageSettings("error", (1, 2, 3)), Preprocessing(32, 36, "bilinear", (0.5,) * 3, (0.5,) * 3), "bf16")
    assert ImagePipeline.from_dict(json.loads(json.dumps(pipeline.to_dict()))) == pipeline
    with pytest.raises(ValueError):
        ImagePipeline.from_dict({**pipeline.to_dict(), "on_bad_image": "ignore"})


def test_old_recipes_with_decoding_keys_under_dataset_are_told_where_they_went(plugins) -> None:
    for key, value in (("background", "white"), ("on_bad_image", "skip")):
        with pytest.raises(RecipeError, match=rf"'dataset.{key}' has moved to its own section.*images.{key}"):
            resolve({"dataset": {"root": "d", key: value}}, plugins)


def test_predict_lists_each_image_once_in_a_folder_with_a_symlink_loop(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    make_image_folder(folder, n_train=2, n_test=1)
    (folder / "train" / "cats" / "loop").symlink_to(folder)  # photos/train/cats/loop -> photos (a cycle)
    (folder / "twice").symlink_to(folder / "val")  # the same folder reachable by two names
    fifo = folder / "train" / "pipe.jpg"
    os.mkfifo(fifo)  # opening a FIFO blocks: it must never be handed to the decoder
    found = image_files([folder])
    assert len(found) == len(set(found)) == 6
    expected = {folder / split / name / f"{name}_{i}.jpg" for split, n in (("train", 2), ("val", 1)) for name in ("cats", "dogs") for i in range(n)}
    assert {p.resolve() for p in found} == {p.resolve() for p in expected}
    assert fifo not in found
    with pytest.raises(DataError, match="does not exist"):
        image_files([tmp_path / "nowhere"])
