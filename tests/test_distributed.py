"""Ranks of a distributed run: the launcher's environment, bounded collectives, and a run split over ranks."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import dist_workers
import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_image_folder, write_recipe

from tlkit.contract.specs import Features, Sample
from tlkit.recipe.loader import load_recipe
from tlkit.run import stages
from tlkit.run.launch import RankPart, merge, positions_of
from tlkit.run.ranks import DistEnv, DistributedError, backend_for, detect, device_for, timeout_s
from tlkit.run.stages import Shard, SplitFeatures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_detect_reads_torchrun_then_slurm_and_defaults_to_one_process():
    assert detect({}) == DistEnv()
    assert not detect({}).distributed
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "29500", "SLURM_PROCID": "7", "SLURM_NTASKS": "8"}
    assert detect(torchrun) == DistEnv(1, 4, 1, "node0", "29500", "torchrun")  # srun launching torchrun: torchrun's view wins
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert detect(slurm) == DistEnv(5, 8, 1, "n1", "1234", "slurm")
    assert not detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).distributed  # a one-task job is a plain run


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 does not fit WORLD_SIZE=2"),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "MASTER_ADDR/MASTER_PORT are not set"),
        ({"TLKIT_DIST_TIMEOUT": "soon"}, "TLKIT_DIST_TIMEOUT='soon' is not a number"),
    ],
)
def test_a_malformed_launcher_environment_is_one_line(environ, message):
    with pytest.raises(DistributedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        timeout_s(environ) if "TLKIT_DIST_TIMEOUT" in environ else detect(environ)


def test_cpu_ranks_use_gloo():
    device = device_for(DistEnv(0, 2, 0, "a", "1"), "cpu")
    assert device == torch.device("cpu") and backend_for(device) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"


@pytest.mark.parametrize(("n", "world", "block"), [(0, 2, 1), (1, 2, 1), (7, 3, 1), (244, 2, 32), (153, 4, 32), (5, 8, 2), (65, 2, 32)])
def test_shards_tile_every_split_without_padding(n, world, block):
    items = list(range(n))
    parts = [Shard(rank, world, block).select(items) for rank in range(world)]
    assert sorted(i for part in parts for i in part) == items  # none missed, none twice, no padding
    assert max(map(len, parts)) - min(map(len, parts)) <= block
    # in batches of `block`, each rank's batches are batches of the whole split
    one_process = {tuple(items[i:i + block]) for i in range(0, n, block)}
    assert all(tuple(part[i:i + block]) in one_process for part in parts for i in range(0, len(part), block))


def _split_features(samples: list[Sample], dim: int = 3) -> SplitFeatures:
    x = torch.stack([torch.full((dim,), float(s.label * 100 + int(s.path.stem))) for s in samples]) if samples else torch.empty(0, dim)
    y = torch.tensor([s.label for s in samples], dtype=torch.long)
    return SplitFeatures(features={"train": Features(x, y), "test": Features(x, y)}, samples={"train": tuple(samples), "test": tuple(samples)})


def test_merge_puts_rank_parts_back_in_image_order_and_refuses_overlaps():
    samples = [Sample(Path(f"{i}.jpg"), i % 2) for i in range(7)]
    parts = []
    for rank in range(2):
        mine = Shard(rank, 2, 2).select(samples)
        kept = [s for s in mine if s.path.stem != "4"]  # image 4 did not decode on rank 0
        positions = positions_of(kept, mine, Shard(rank, 2, 2).select(range(7)))
        parts.append(RankPart(rank, {"train": positions, "test": positions}, _split_features(kept)))
    merged, log = merge(parts, {"train": 7, "test": 7}, 2)
    expected = [s for s in samples if s.path.stem != "4"]
    assert list(merged.samples["train"]) == expected
    assert torch.equal(merged.features["train"].x, _split_features(expected).features["train"].x)
    assert [(row[1], row[3]) for row in log if row[0] == "train"] == [(0, 0), (1, 0), (2, 1), (3, 1), (5, 0), (6, 1)]
    wrong = RankPart(1, {"train": [0], "test": [0]}, _split_features(samples[:1]))  # rank 1 claims rank 0's image
    with pytest.raises(DistributedError, match="not in its shard"):
        merge([parts[0], wrong], {"train": 7, "test": 7}, 2)


def _spawn(fn, world: int, *args) -> None:
    mp.start_processes(fn, args=(world, _free_port(), *args), nprocs=world, join=True, start_method="spawn")


def test_collectives_gather_in_rank_order_and_a_missing_rank_is_one_error_within_the_timeout(tmp_path):
    _spawn(dist_workers.collectives, 3, str(tmp_path), 2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert results[0]["gathered"] == [0, 1, 2] and results[1]["gathered"] is None
    assert results[0]["floats"] == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]
    assert all(r["broadcast"] == "from rank 0" for r in results[:2])
    error = results[0]["error"]  # rank 2 never came to the second gather
    assert error.startswith("rank 0/3: another rank failed or did not answer within 4 s while gathering the second values (")
    assert "\n" not in error and "rerun to resume" in error
    assert results[0]["seconds"] < 30  # 4 s timeout; generous for a loaded machine


def test_two_ranks_give_the_one_process_run(tmp_path):
    """Each image extracted by exactly one rank; rank 0's run equals a one-process run; both ranks say the same line."""
    root = make_image_folder(tmp_path / "data", n_train=7, n_test=4)
    recipe_file = write_recipe(tmp_path / "r.yaml", root)
    _spawn(dist_workers.run_recipe, 2, str(recipe_file), str(tmp_path / "run"), str(tmp_path), str(tmp_path / "cache"))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]  # every rank returns rank 0's result, knowing which rank it is
    assert ranks[0]["accuracy"] == ranks[1]["accuracy"] and ranks[0]["out_dir"] == ranks[1]["out_dir"]
    assert ranks[0]["summary"] == ranks[1]["summary"] and ranks[0]["summary"].startswith("2 ranks done: test accuracy")
    # batches of 4 dealt out in turn: rank 1 has train images 4-7 and 12-13, test images 4-7
    assert any("extracted its shard" in line and "10 extracted, 0 cached" in line for line in ranks[1]["notes"])
    with (tmp_path / "run" / "ranks.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 22 and len({(r["split"], r["path"]) for r in rows}) == 22
    assert {r["rank"] for r in rows} == {"0", "1"}

    from tiny import TinyPlugin

    from tlkit.contract.plugin_manager import load_plugins

    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    recipe = load_recipe(recipe_file, plugins)
    single = stages.extract(stages.prepare(recipe), store=None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    from tlkit.run.engine import run

    reference = run(load_recipe(write_recipe(tmp_path / "r1.yaml", root, extract={"cache": False}), plugins), tmp_path / "single").metrics
    assert metrics["test_accuracy"] == reference.test_accuracy and metrics["train_accuracy"] == reference.train_accuracy
    assert [str(r["path"]) for r in rows if r["split"] == "train"] == [str(s.path) for s in single.samples["train"]]
    from tlkit.extract.cache import hash_files

    store = next((tmp_path / "cache" / "features").iterdir())
    from safetensors.torch import load_file

    cached = {k: v for chunk in store.glob("chunk-*.safetensors") for k, v in load_file(chunk).items()}
    hashes = hash_files([s.path for s in single.samples["train"]], tmp_path / "cache")
    assert torch.equal(torch.stack([cached[h] for h in hashes]), single.features["train"].x)  # the one-process run's batches: bit-identical


@pytest.mark.parametrize("resume", [False, True])
def test_fine_tuning_or_resuming_under_torchrun_is_refused_before_any_work(tiny_plugins, image_folder, tmp_path, monkeypatch, resume):
    from tlkit.contract.observer import Observer
    from tlkit.run.engine import run

    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    recipe = load_recipe(_finetune_recipe(tmp_path, image_folder), tiny_plugins)
    assert recipe.finetune is not None
    with pytest.raises(DistributedError, match="without torchrun"):
        run(recipe, tmp_path / "run", Observer(), resume=tmp_path if resume else None)  # engine.run reads the ranks from the environment
    assert not (tmp_path / "run").exists()


def test_the_cli_run_goes_through_engine_run_which_reads_the_ranks(tiny_plugins, image_folder, tmp_path, monkeypatch, capsys):
    """``tlkit run`` under torchrun's environment: the CLI calls engine.run, which sees the ranks (and refuses fine-tuning there)."""
    from tlkit.cli.app import main

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["run", str(_finetune_recipe(tmp_path, image_folder)), "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "mode: finetune runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _finetune_recipe(tmp_path: Path, root: Path) -> Path:
    import yaml

    path = write_recipe(tmp_path / "r.yaml", root)
    data = yaml.safe_load(path.read_text())
    data.update(mode="finetune", finetune={"epochs": 1})
    path.write_text(yaml.safe_dump(data))
    return path
