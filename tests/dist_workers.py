"""Functions run in spawned ranks by tests/test_distributed.py (module level, so spawn can import them)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


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


def run_recipe(rank: int, world: int, port: int, recipe_file: str, run_dir: str, out: str, cache: str) -> None:
    """One rank of ``tlkit run`` (tiny backbone), as torchrun would start it."""
    os.environ["TLKIT_CACHE_DIR"] = cache
    import torch

    torch.set_num_threads(1)
    from tiny import TinyPlugin

    from tlkit.contract.observer import Observer
    from tlkit.contract.plugin_manager import load_plugins, set_plugins
    from tlkit.recipe.loader import load_recipe
    from tlkit.run.engine import run

    class Notes(Observer):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def note(self, text: str) -> None:
            self.lines.append(text)

    plugins = load_plugins(entry_points=False, extra=[TinyPlugin()])
    set_plugins(plugins)
    notes = Notes()
    result = run(load_recipe(recipe_file, plugins), Path(run_dir), notes, env=_env(rank, world, port))  # the engine's one composition
    summary = {"summary": result.ranks_line, "rank": result.rank, "accuracy": result.metrics.test_accuracy, "out_dir": str(result.out_dir), "notes": notes.lines}
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))
