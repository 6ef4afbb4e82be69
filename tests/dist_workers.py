"""Functions run in spawned ranks by tests/test_distributed.py (module level, so spawn can import them)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tlkit  # noqa: E402


def _env(rank: int, world: int, port: int):
    from tlkit.run.ranks import DistEnv

    return DistEnv(rank, world, rank, "127.0.0.1", str(port), "test")


def collectives(rank: int, world: int, port: int, out: str, skip_rank: int) -> None:
    """A gather and a broadcast of all ranks, then a second gather that ``skip_rank`` never comes to."""
    import torch

    from tlkit.run.ranks import DistributedError, broadcast_from_main, gather_to_main, process_group

    env = _env(rank, world, port)
    result: dict = {"rank": rank}
    try:
        with process_group(env, torch.device("cpu"), timeout=4):
            gathered = gather_to_main(env, {"rank": rank}, "gathering the test values", torch.full((2,), float(rank)), max_floats=2)
            result["gathered"] = None if gathered is None else [g.record("gathering")["rank"] for g in gathered]
            result["floats"] = None if gathered is None else [g.floats.tolist() for g in gathered]
            result["broadcast"] = broadcast_from_main(env, {"text": "from rank 0"} if rank == 0 else None, "broadcasting")["text"]
            started = time.monotonic()
            if rank == skip_rank:
                time.sleep(8)
            else:
                gather_to_main(env, {"rank": rank}, "gathering the second values")
    except DistributedError as exc:
        result["error"] = str(exc)
    result["seconds"] = time.monotonic() - started
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _plugins():
    from tiny import TinyPlugin

    from tlkit.contract.plugin_manager import load_plugins, set_plugins

    plugins = load_plugins(entry_points=False, extra=[TinyPlugin(), WidePlugin()])
    set_plugins(plugins)
    return plugins


class WidePlugin:
    """``tiny_wide``: the tiny CNN with 16-d features, for ranks started with another backbone."""

    __name__ = "tests-wide"

    @tlkit.hookimpl
    def register_backbones(self, register) -> None:
        import dataclasses

        from tiny import TinyPlugin

        TinyPlugin().register_backbones(lambda spec: register(dataclasses.replace(spec, name="tiny_wide", build=_build_wide, feature_dim=16)))


def _build_wide(weights, options):
    import torch
    from tiny import TinyCNN

    import tlkit

    model = TinyCNN()
    model.conv = torch.nn.Conv2d(3, 16, 3, stride=2)
    return tlkit.BuiltBackbone(model=model, weights_id="random")


def run_recipe(rank: int, world: int, port: int, recipe_file: str, run_dir: str, out: str, cache: str) -> None:
    """One rank of ``tlkit run`` (tiny backbone), as torchrun would start it; ``{rank}`` in ``recipe_file`` gives each rank its own."""
    os.environ["TLKIT_CACHE_DIR"] = cache
    import torch

    torch.set_num_threads(1)
    from tlkit.contract.observer import Observer
    from tlkit.errors import TlkitError
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.engine import run

    class Notes(Observer):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def note(self, text: str) -> None:
            self.lines.append(text)

    plugins = _plugins()
    notes = Notes()
    try:
        result = run(load_recipe(recipe_file.format(rank=rank), plugins), Path(run_dir), notes, env=_env(rank, world, port))  # the engine's one composition
    except TlkitError as exc:
        Path(out, f"rank{rank}.json").write_text(json.dumps({"error": str(exc), "notes": notes.lines}))
        return
    summary = {"summary": result.ranks_line, "rank": result.rank, "accuracy": result.metrics.test_accuracy, "out_dir": str(result.out_dir), "notes": notes.lines}
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))


class Evil:
    """Unpickled, it creates ``marker``: what a stranger on MASTER_PORT would send as rank 1."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile(rank: int, world: int, port: int, recipe_file: str, run_dir: str, out: str, cache: str, marker: str, stage: str) -> None:
    """Rank 0 runs the recipe; "rank 1" joins the group and sends a pickle (or a huge size) where rank 0 expects a record.

    ``stage``: ``first`` at the first exchange, ``features`` after an honest identity check, ``huge``
    announcing a 1 TiB record. tlkit before JSON records exchanged with ``gather_object``: there the
    pickle goes through it.
    """
    if rank == 0:
        return run_recipe(rank, world, port, recipe_file, run_dir, out, cache)
    import pickle

    import torch
    import torch.distributed as dist

    from tlkit.run import ranks

    env = _env(rank, world, port)
    payload = pickle.dumps(Evil(marker))
    with ranks.process_group(env, torch.device("cpu"), timeout=30):
        if not hasattr(ranks, "encode_record"):  # the exchange before this issue: pickles
            dist.gather_object(Evil(marker), None, dst=0)
            time.sleep(5)
            return
        if stage == "huge":
            dist.all_gather([torch.zeros(1, dtype=torch.int64) for _ in range(world)], torch.tensor([2**40], dtype=torch.int64))
            return
        if stage == "features":  # an honest start, so rank 0 gets as far as the features
            from tlkit.recipe.loader import load_recipe
            from tlkit.run import stages
            from tlkit.run.rank_records import check_same_run

            check_same_run(env, stages.prepare(load_recipe(recipe_file, _plugins())))
        ranks.encode_record = lambda record: payload  # the raw bytes of a pickle where a JSON record belongs
        try:
            if stage == "first":
                ranks.all_gather_records(env, {}, "sending")  # it decodes its own bytes too, and refuses them
            else:
                ranks.gather_to_main(env, {}, "sending", torch.zeros(3), max_floats=10**9)
        except ranks.DistributedError:
            pass
        time.sleep(2)
