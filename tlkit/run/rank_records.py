"""What ranks tell each other, as JSON records and float tensors checked on arrival (never pickles).

- at the start, each rank's identity (:func:`check_same_run`): the resolved recipe, the code's
  versions and a digest of the data listing; a difference stops every rank with one line naming it;
- after extraction, each rank's part (:func:`part_record` / :func:`part_from`): positions in the
  split, the skipped files and the features as floats, read back against rank 0's own listing, so a
  peer can name no file rank 0 did not list;
- at the end, rank 0's result (:func:`result_record` / :func:`result_from`): the run directory and
  the headline figures the other ranks print.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

import tlkit
from tlkit.contract.specs import Features, LoadedDataset
from tlkit.outputs.metrics import RunMetrics, SplitMetrics
from tlkit.run import stages
from tlkit.run.finish import RunResult
from tlkit.run.ranks import DistEnv, DistributedError, MalformedRecord, Received, all_gather_records, encode_record, leave_together
from tlkit.run.stages import BadFile, Prepared, SplitFeatures

MAX_REASON = 500  # characters of a skipped file's reason kept from a peer
Fail = Callable[[str], NoReturn]  # raises MalformedRecord naming the rank


@dataclass(frozen=True)
class RankPart:
    """What one rank sends to rank 0: per split, the positions (in the whole split) of the images it kept, and their features."""

    rank: int
    positions: dict[str, list[int]]
    features: SplitFeatures


def listing_digest(dataset: LoadedDataset) -> str:
    """sha256 of the classes and, per split, each sample's path, label and size (a member's hash)."""
    digest = hashlib.sha256(json.dumps(list(dataset.classes)).encode("utf-8"))
    for split in stages.SPLITS:
        for sample in dataset.splits[split]:
            digest.update(json.dumps([split, str(sample.path), sample.label, sample.member.sha256 if sample.member else _size(sample.path)]).encode("utf-8"))
    return digest.hexdigest()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def identity(prepared: Prepared) -> dict[str, Any]:
    recipe = json.loads(encode_record(prepared.recipe.to_dict()))
    return {"recipe": recipe, "code": {"tlkit": tlkit.__version__, "torch": torch.__version__}, "data": listing_digest(prepared.dataset)}


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)  # escapes control characters a peer may send
    return text if len(text) <= 60 else text[:57] + "..."


def _differing_keys(ours: Any, theirs: Any, prefix: str = "") -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = sorted(set(ours) | set(theirs))
        return [line for key in keys for line in _differing_keys(ours.get(key), theirs.get(key), f"{prefix}{key}.")]
    return [] if ours == theirs else [f"{prefix.rstrip('.')}: {_show(theirs)} vs {_show(ours)}"]


def difference(reference: dict[str, Any], other: dict[str, Any]) -> str:
    """How ``other`` differs from rank 0's ``reference`` identity, in words ("" if it does not)."""
    if other.get("code") != reference.get("code"):
        return f"different code ({_show(other.get('code'))} vs {_show(reference.get('code'))})"
    keys = _differing_keys(reference.get("recipe"), other.get("recipe"))
    if keys:
        more = f", and {len(keys) - 3} more" if len(keys) > 3 else ""
        return f"a different recipe ({'; '.join(keys[:3])}{more})"
    if other.get("data") != reference.get("data"):
        return "a different data listing (the files, their labels or their sizes differ)"
    return ""


def check_same_run(env: DistEnv, prepared: Prepared) -> None:
    """Every rank's identity exchanged once; any difference from rank 0 stops every rank with the same line."""
    records = all_gather_records(env, identity(prepared), "checking that every rank runs the same recipe, code and data")
    for rank, record in enumerate(records[1:], start=1):
        found = difference(records[0], record)
        if found:
            leave_together(env)  # every rank found the same difference in the same records
            raise DistributedError(
                f"{env.label()}: rank {rank} runs {found} than rank 0 (values as rank {rank} vs rank 0); "
                "start every rank with the same recipe, --set values, tlkit version and data"
            )


def part_record(part: RankPart) -> tuple[dict[str, Any], torch.Tensor]:
    """A rank's part as a JSON record and its features as one flat float tensor (splits in order)."""
    f = part.features
    record = {
        "rank": part.rank, "positions": part.positions, "shapes": {s: list(f.features[s].x.shape) for s in stages.SPLITS},
        "bad": [[b.split, str(b.path), b.reason] for b in f.bad], "cached": f.cached, "extracted": f.extracted, "seconds": f.seconds,
    }
    return record, torch.cat([f.features[s].x.reshape(-1).float().cpu() for s in stages.SPLITS])


def _count(record: dict[str, Any], key: str, fail: Fail) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(f"'{key}' is not a count")
    return int(value)


def _positions(record: dict[str, Any], split: str, size: int, fail: Fail) -> list[int]:
    value = record.get("positions", {}).get(split) if isinstance(record.get("positions"), dict) else None
    if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < size for p in value):
        fail(f"'positions.{split}' is not a list of image positions in 0..{size - 1}")
    return value


def _bad_files(record: dict[str, Any], listing: dict[str, set[str]], fail: Fail) -> tuple[BadFile, ...]:
    rows = record.get("bad")
    if not isinstance(rows, list):
        fail("'bad' is not a list")
    bad = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and all(isinstance(v, str) for v in row) and row[0] in listing and row[1] in listing[row[0]]):
            fail("'bad' names a file that is not in rank 0's listing")
        bad.append(BadFile(row[0], Path(row[1]), row[2][:MAX_REASON]))
    return tuple(bad)


def part_from(received: Received, prepared: Prepared, dim: int, what: str) -> RankPart:
    """A peer's part checked against rank 0's listing and feature dimension; samples and labels come from rank 0's own listing."""

    def fail(reason: str) -> NoReturn:
        raise MalformedRecord(received.rank, what, reason)

    record = received.record(what)
    if record.get("rank") != received.rank:
        fail(f"it says it is rank {_show(record.get('rank'))}")
    splits = prepared.dataset.splits
    listing = {s: {str(sample.path) for sample in splits[s]} for s in stages.SPLITS}
    positions = {s: _positions(record, s, len(splits[s]), fail) for s in stages.SPLITS}
    shapes = record.get("shapes")
    expected = {s: [len(positions[s]), dim if positions[s] else _empty_dim(shapes, s, dim)] for s in stages.SPLITS}
    if not isinstance(shapes, dict) or any(shapes.get(s) != expected[s] for s in stages.SPLITS):
        fail(f"its feature shapes {_show(shapes)} are not {_show(expected)}")
    if received.floats.numel() != sum(n * d for n, d in expected.values()) or not bool(torch.isfinite(received.floats).all()):
        fail("its features do not match their shapes or are not finite")
    seconds = record.get("seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        fail("'seconds' is not a duration")
    features, samples, offset = {}, {}, 0
    for s in stages.SPLITS:
        n, d = expected[s]
        samples[s] = tuple(splits[s][p] for p in positions[s])
        features[s] = Features(received.floats[offset : offset + n * d].reshape(n, d), torch.tensor([x.label for x in samples[s]], dtype=torch.long))
        offset += n * d
    split_features = SplitFeatures(
        features=features, samples=samples, bad=_bad_files(record, listing, fail),
        cached=_count(record, "cached", fail), extracted=_count(record, "extracted", fail), seconds=float(seconds),
    )
    return RankPart(received.rank, positions, split_features)


def _empty_dim(shapes: Any, split: str, dim: int) -> int:
    """An empty split's second dimension as the peer gave it (``(0, 0)`` or ``(0, D)``): nothing is read from it."""
    shape = shapes.get(split) if isinstance(shapes, dict) else None
    return 0 if isinstance(shape, list) and shape == [0, 0] else dim


def feature_dim(part: RankPart) -> int:
    return max((int(f.x.shape[1]) for f in part.features.features.values() if f.x.dim() == 2 and len(f)), default=0)


def max_floats(prepared: Prepared, dim: int) -> int:
    return sum(len(prepared.dataset.splits[s]) for s in stages.SPLITS) * max(dim, 1)


def _split_summary(m: SplitMetrics) -> dict[str, Any]:
    return {"accuracy": m.accuracy, "balanced_accuracy": m.balanced_accuracy, "correct": m.correct, "count": m.count}


def result_record(outcome: RunResult | str) -> dict[str, Any]:
    """What rank 0 tells the others at the end: its error, or where the run went and its headline figures."""
    if isinstance(outcome, str):
        return {"error": outcome}
    m = outcome.metrics
    return {"out_dir": str(outcome.out_dir), "counts": dict(m.counts), "test": _split_summary(m.test), "train": _split_summary(m.train)}


def _split_from(value: Any, fail: Fail) -> SplitMetrics:
    ok = isinstance(value, dict) and all(isinstance(value.get(k), int) for k in ("correct", "count"))
    ok = ok and all(value.get(k) is None or isinstance(value.get(k), (int, float)) for k in ("accuracy", "balanced_accuracy"))
    if not ok:
        fail("its metrics are not accuracies and counts")
    return SplitMetrics(value["accuracy"], value["balanced_accuracy"], value["correct"], value["count"], {}, [])


def result_from(record: dict[str, Any], what: str) -> RunResult | str:
    """Rank 0's answer on another rank: its error line, or a result holding the headline figures (the rest is in metrics.json)."""

    def fail(reason: str) -> NoReturn:
        raise MalformedRecord(0, what, reason)

    if isinstance(record.get("error"), str):
        return _printable(record["error"][:2000])
    counts, out_dir = record.get("counts"), record.get("out_dir")
    if not isinstance(out_dir, str) or not isinstance(counts, dict) or not all(isinstance(counts.get(s), int) for s in stages.SPLITS):
        fail("it holds no run directory and counts")
    if _printable(out_dir) != out_dir:
        fail("its run directory holds control characters")
    counts = {s: int(counts[s]) for s in stages.SPLITS}
    metrics = RunMetrics(test=_split_from(record.get("test"), fail), train=_split_from(record.get("train"), fail), classes=[], counts=counts, feature_dim=0)
    return RunResult(out_dir=Path(out_dir), metrics=metrics)


def _printable(text: str) -> str:
    """``text`` with control characters escaped (it reaches the terminal of every rank)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def parts_on_main(mine: RankPart, received: Sequence[Received], prepared: Prepared, what: str) -> list[RankPart]:
    """Rank 0's own part as it is, every other rank's read back from what it sent."""
    dim = feature_dim(mine)
    return [mine, *(part_from(r, prepared, dim, what) for r in received[1:])]

