"""Hostile manifests and tables: a CSV or a saved ``datasets`` copy from someone else reads nothing outside its
folder, unpickles nothing, stays bounded, and whatever is wrong is one line naming the file and where in it."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLASS_COLOURS, make_image, make_image_folder, write_recipe
from conftest import load_listing as load

from tlkit.contract.observer import Observer
from tlkit.errors import DataError
from tlkit.recipe.loader import load_recipe
from tlkit.run.engine import run

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("path,label,split\n" + "".join(f"{line}\n" for line in lines))
    return path


def jpeg(tmp_path: Path, name: str = "img.jpg", seed: int = 0) -> bytes:
    return make_image(tmp_path / "src" / name, CLASS_COLOURS[seed % 3], seed=seed).read_bytes()


def write_arrow(folder: Path, table: pa.Table, names: tuple[str, ...] = ("ants", "bees"), extra: dict | None = None) -> Path:
    """A split folder as ``Dataset.save_to_disk`` writes it: an Arrow IPC stream, state.json, dataset_info.json."""
    features = {"image": {"_type": "Image"}, "label": {"names": list(names), "_type": "ClassLabel"}, **(extra or {})}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    folder.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    return folder


def image_table(tmp_path: Path, labels: list, **columns) -> pa.Table:
    cells = [{"bytes": jpeg(tmp_path, f"{i}.jpg", i), "path": f"{i}.jpg"} for i in range(len(labels))]
    return pa.table({"image": pa.array(cells, IMAGE), "label": pa.array(labels, pa.int64()), **columns})


def saved_dict(tmp_path: Path, train: pa.Table, test: pa.Table, **extra) -> Path:
    root = tmp_path / "saved"
    write_arrow(root / "train", train, **extra)
    write_arrow(root / "test", test, **extra)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    return root


# -- CSV manifests -----------------------------------------------------------------------------------------


def test_csv_paths_that_lead_out_of_the_folder_are_refused_by_line(builtins, tmp_path):
    root = tmp_path / "root"
    make_image(root / "a.jpg", CLASS_COLOURS[0])
    secret = make_image(tmp_path / "outside" / "secret.jpg", CLASS_COLOURS[1])
    (root / "link.jpg").symlink_to(secret)
    (root / "inner").mkdir()
    (root / "inner" / "up").symlink_to(tmp_path / "outside", target_is_directory=True)
    os.mkfifo(root / "pipe.jpg")
    cases = {
        "../outside/secret.jpg": r"line 3: the path '../outside/secret.jpg' holds '..'",
        str(secret): r"line 3: '.*secret.jpg' leads outside .*root \(an absolute path or a link\)",
        "link.jpg": r"line 3: 'link.jpg' leads outside",
        "inner/up/secret.jpg": r"line 3: 'inner/up/secret.jpg' leads outside",
        "pipe.jpg": r"line 3: 'pipe.jpg' is not a regular file",
    }
    for path, message in cases.items():
        manifest = write_csv(root / "m.csv", ["a.jpg,ants,train", f"{path},bees,test"])
        with pytest.raises(DataError, match=rf"m.csv: {message}"):
            load(builtins, "csv", file=str(manifest))
    # an absolute path inside the folder, and a link that stays inside it, are fine
    (root / "inside.jpg").symlink_to(root / "a.jpg")
    manifest = write_csv(root / "m.csv", [f"{root / 'a.jpg'},ants,train", "inside.jpg,ants,test"])
    assert len(load(builtins, "csv", file=str(manifest)).splits["test"]) == 1


def test_a_huge_csv_is_refused_before_it_is_read(builtins, tmp_path, monkeypatch):
    sparse = tmp_path / "huge.csv"
    with sparse.open("wb") as handle:
        handle.truncate(2**30)  # 1 GiB of nothing (sparse), never read
    with pytest.raises(DataError, match=r"huge.csv is 1024.0 MiB, over TLKIT_MAX_MANIFEST_BYTES \(256 MiB\)"):
        load(builtins, "csv", file=str(sparse))
    make_image(tmp_path / "a.jpg", CLASS_COLOURS[0])
    make_image(tmp_path / "b.jpg", CLASS_COLOURS[1])
    manifest = write_csv(tmp_path / "m.csv", ["a.jpg,ants,train", "b.jpg,bees,test"])
    monkeypatch.setenv("TLKIT_MAX_MANIFEST_ROWS", "1")
    with pytest.raises(DataError, match=r"m.csv: more than 1 rows \(TLKIT_MAX_MANIFEST_ROWS\)"):
        load(builtins, "csv", file=str(manifest))
    monkeypatch.setenv("TLKIT_MAX_MANIFEST_ROWS", "inf")
    monkeypatch.setenv("TLKIT_MAX_MANIFEST_BYTES", "20")
    with pytest.raises(DataError, match=r"m.csv is 0.0 MiB, over TLKIT_MAX_MANIFEST_BYTES"):
        load(builtins, "csv", file=str(manifest))
    monkeypatch.setenv("TLKIT_MAX_MANIFEST_BYTES", "lots")
    with pytest.raises(DataError, match=r"TLKIT_MAX_MANIFEST_BYTES='lots' is not a number"):
        load(builtins, "csv", file=str(manifest))


def test_a_csv_that_is_not_utf8_text_is_one_line(builtins, tmp_path):
    (tmp_path / "m.csv").write_bytes(b"path,label\n\xff\xfe\x00junk,\x80\n")
    with pytest.raises(DataError, match=r"m.csv is not UTF-8 text"):
        load(builtins, "csv", file=str(tmp_path / "m.csv"))


# -- saved datasets copies -----------------------------------------------------------------------------------


def test_a_table_without_images_or_a_chosen_non_image_column_is_one_line(builtins, tmp_path):
    plain = pa.table({"caption": pa.array(["an ant", "a bee"]), "label": pa.array([0, 1], pa.int64())})
    root = saved_dict(tmp_path, plain, plain)
    with pytest.raises(DataError, match=r"data-00000-of-00001.arrow has no image columns \(caption, label\); set dataset.image"):
        load(builtins, "hf_datasets", root=str(root))
    table = image_table(tmp_path, [0, 1], caption=pa.array(["an ant", "a bee"]))
    root = saved_dict(tmp_path, table, table)
    with pytest.raises(DataError, match=r"column 'caption' holds string, not images"):
        load(builtins, "hf_datasets", root=str(root), image="caption")


class Marker:
    """Unpickling this writes a file: the proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_column_and_a_pkl_file_beside_the_tables_are_never_unpickled(builtins, tmp_path):
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps(Marker(str(marker)))
    table = image_table(tmp_path, [0, 1])
    # a column typed as pyarrow's old pickle-backed extension type (arrow.py_extension_type), its cells pickles too
    pickled = pa.field("obj", pa.binary(), metadata={b"ARROW:extension:name": b"arrow.py_extension_type", b"ARROW:extension:metadata": payload})
    table = table.append_column(pickled, pa.array([payload, payload], pa.binary()))
    root = saved_dict(tmp_path, table, table)
    (root / "train" / "cache.pkl").write_bytes(payload)
    (root / "train" / "state.pkl").write_bytes(payload)
    loaded = load(builtins, "hf_datasets", root=str(root))
    assert len(loaded.splits["train"]) == 2 and all(s.member.name.startswith("image/") for s in loaded.splits["train"])
    assert any("left out 2 files that are not its Arrow tables (never opened): cache.pkl, state.pkl" in n for n in loaded.notes)
    with pytest.raises(DataError, match=r"column 'obj' has an Arrow extension type, which tlkit never reads"):
        load(builtins, "hf_datasets", root=str(root), image="obj")
    (root / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "cache.pkl"}]}))
    with pytest.raises(DataError, match=r"state.json: 'cache.pkl' is not a plain .arrow file name"):
        load(builtins, "hf_datasets", root=str(root))
    (root / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../../elsewhere.arrow"}]}))
    with pytest.raises(DataError, match=r"'../../elsewhere.arrow' is not a plain .arrow file name"):
        load(builtins, "hf_datasets", root=str(root))
    os.rename(root / "train", tmp_path / "elsewhere")
    (root / "train").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a split folder that is a link out
    with pytest.raises(DataError, match=r"saved/train leads outside .*saved \(a link\)"):
        load(builtins, "hf_datasets", root=str(root))
    assert not marker.exists()


def test_a_damaged_or_cut_table_is_one_line_naming_it(builtins, tmp_path):
    table = image_table(tmp_path, [0, 1, 0, 1, 0, 1])
    root = saved_dict(tmp_path, table, table)
    arrow = root / "train" / "data-00000-of-00001.arrow"
    whole = arrow.read_bytes()
    arrow.write_bytes(whole[: len(whole) * 2 // 3])  # cut inside a record batch
    with pytest.raises(DataError, match=r"cannot read the table .*train/data-00000-of-00001.arrow .*damaged or cut short\?"):
        load(builtins, "hf_datasets", root=str(root))
    arrow.write_bytes(b"PAR1" + os.urandom(4000))
    with pytest.raises(DataError, match=r"cannot read the table .*data-00000-of-00001.arrow"):
        load(builtins, "hf_datasets", root=str(root))
    hub = tmp_path / "hub"
    hub.mkdir()
    pq.write_table(table, hub / "train-00000-of-00001.parquet")
    (hub / "test-00000-of-00001.parquet").write_bytes((hub / "train-00000-of-00001.parquet").read_bytes()[:-100])
    with pytest.raises(DataError, match=r"cannot read the table .*test-00000-of-00001.parquet .*not a readable Parquet file"):
        load(builtins, "hf_datasets", root=str(hub))


@pytest.mark.parametrize(("label", "shown"), [(-1, "-1"), (None, "None")])
def test_a_row_without_a_label_is_one_line_naming_its_row(builtins, tmp_path, label, shown):
    table = image_table(tmp_path, [0, 1, label])
    root = saved_dict(tmp_path, table, image_table(tmp_path, [0, 1]))
    with pytest.raises(DataError, match=rf"train/data-00000-of-00001.arrow: row 2 has no label \({shown}\)"):
        load(builtins, "hf_datasets", root=str(root))
    table = image_table(tmp_path, [0, 1, 7])
    root = saved_dict(tmp_path, table, table)
    with pytest.raises(DataError, match=r"row 2: class index 7 is outside the 2 ClassLabel names"):
        load(builtins, "hf_datasets", root=str(root))
    root = saved_dict(tmp_path, image_table(tmp_path, [0, 1]), image_table(tmp_path, [0, 1]))
    write_arrow(root / "test", image_table(tmp_path, [0, 1]), names=("bees", "ants"))  # the same indices, other classes
    with pytest.raises(DataError, match=r"test/data-00000-of-00001.arrow: the ClassLabel names of 'label' differ from the first table's \['ants', 'bees'\]"):
        load(builtins, "hf_datasets", root=str(root))


def test_images_stored_by_path_or_too_large_are_bad_images_never_read(tiny_plugins, tmp_path, monkeypatch):
    """A cell naming a file (here one outside the copy) is not followed; an image over the limit is not read: both
    are reported bad images, ``images.on_bad_image`` applies, and the other images run."""
    outside = make_image(tmp_path / "outside" / "private.jpg", CLASS_COLOURS[0])
    big = make_image(tmp_path / "src" / "big.jpg", CLASS_COLOURS[1], size=(400, 400)).read_bytes()
    cells = [{"bytes": jpeg(tmp_path, f"{i}.jpg", i), "path": None} for i in range(6)]
    cells += [{"bytes": None, "path": str(outside)}, {"bytes": big, "path": "big.jpg"}]
    train = pa.table({"image": pa.array(cells, IMAGE), "label": pa.array([0, 1, 0, 1, 0, 1, 0, 1], pa.int64())})
    root = saved_dict(tmp_path, train, image_table(tmp_path, [0, 1]))
    monkeypatch.setenv("TLKIT_MAX_MEMBER_BYTES", str(len(big) - 1))
    data = make_image_folder(tmp_path / "unused", n_train=1, n_test=1)
    recipe = write_recipe(tmp_path / "h.yaml", data, dataset={"name": "hf_datasets", "root": str(root)}, images={"on_bad_image": "skip"})
    notes: list[str] = []

    class Notes(Observer):
        def note(self, text: str) -> None:
            notes.append(text)

    result = run(load_recipe(recipe, tiny_plugins), tmp_path / "run", Notes())
    assert result.metrics.counts["train"] == 6 and result.metrics.skipped_images == 2
    skipped = [n for n in notes if n.startswith("skipped train image")]
    assert len(skipped) == 2 and "image/000006: holds only a path" in skipped[0] and "image/000007: the image is" in skipped[1], notes
    recipe = write_recipe(tmp_path / "e.yaml", data, dataset={"name": "hf_datasets", "root": str(root)}, images={"on_bad_image": "error"})
    with pytest.raises(DataError, match=r"image/000006: holds only a path .*never files it names"):
        run(load_recipe(recipe, tiny_plugins), tmp_path / "run-error")


def test_an_oversized_table_file_is_refused_before_it_is_read(builtins, tmp_path, monkeypatch):
    table = image_table(tmp_path, [0, 1])
    root = saved_dict(tmp_path, table, table)
    monkeypatch.setenv("TLKIT_MAX_TABLE_BYTES", "1000")
    with pytest.raises(DataError, match=r"data-00000-of-00001.arrow is [\d.]+ KB, over TLKIT_MAX_TABLE_BYTES \(1000 B\)"):
        load(builtins, "hf_datasets", root=str(root))


def test_a_parquet_row_group_that_would_inflate_too_far_is_refused_before_it_is_read(builtins, tmp_path, monkeypatch):
    """A Parquet file is read a row group at a time; one whose columns would inflate past the bound (a compression
    bomb) is refused from the file's metadata, before any page is decompressed."""
    import tlkit.sources.image_tables as image_tables

    table = image_table(tmp_path, [0, 1, 0, 1]).append_column("padding", pa.array(["x" * 200_000] * 4))
    hub = tmp_path / "hub"
    hub.mkdir()
    for split in ("train", "test"):
        pq.write_table(table, hub / f"{split}-00000-of-00001.parquet", compression="zstd")
    assert (hub / "train-00000-of-00001.parquet").stat().st_size < 100_000  # 800 KB of padding squeezed small
    assert len(load(builtins, "hf_datasets", root=str(hub)).splits["train"]) == 4  # the padding column is never read
    monkeypatch.setattr(image_tables, "MAX_ROW_GROUP_BYTES", 50_000)
    assert len(load(builtins, "hf_datasets", root=str(hub)).splits["train"]) == 4  # nor counted: only the image and label columns are
    table = table.append_column("big", pa.array([b"\0" * 200_000] * 4, pa.binary()))
    cells = pa.array([{"bytes": b"\0" * 200_000, "path": None}] * 4, IMAGE)
    pq.write_table(table.set_column(0, "image", cells), hub / "train-00000-of-00001.parquet", compression="zstd")
    with pytest.raises(DataError, match=r"train-00000-of-00001.parquet: row group 0 inflates to [\d.]+ [KM]B, over 48.8 KB; write it with smaller row groups"):
        load(builtins, "hf_datasets", root=str(hub))


def test_a_compressed_arrow_table_is_refused_before_any_batch_is_read(builtins, tmp_path):
    """Arrow IPC may compress each buffer; a few KB of zstd can claim gigabytes. ``save_to_disk`` never compresses:
    a compressed table is refused from its message headers, nothing inflated. The IPC *file* format still reads."""
    table = image_table(tmp_path, [0, 1]).append_column("padding", pa.array([b"\0" * 5_000_000] * 2, pa.binary()))
    root = saved_dict(tmp_path, image_table(tmp_path, [0, 1]), image_table(tmp_path, [0, 1]))
    arrow = root / "train" / "data-00000-of-00001.arrow"
    table = table.replace_schema_metadata(pa.ipc.open_stream(pa.memory_map(str(arrow))).schema.metadata)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    assert arrow.stat().st_size < 100_000  # 10 MB of padding in a few KB: really compressed
    with pytest.raises(DataError, match=r"train/data-00000-of-00001.arrow is compressed Arrow IPC, which could inflate without bound"):
        load(builtins, "hf_datasets", root=str(root))
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:  # the file format, uncompressed
        writer.write_table(table)
    assert [s.label for s in load(builtins, "hf_datasets", root=str(root)).splits["train"]] == [0, 1]
