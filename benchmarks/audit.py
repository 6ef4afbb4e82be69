"""The data audit against known faults (issue 19): precision and recall per finding kind, time and memory.

1. A copy of ants/bees is made under a temporary folder (symbolic links to the photos, never into the
   repository); into it go known faults, from a fixed seed: training labels flipped (5% and 10%: the
   link moves to the other class's folder), byte copies of a few test images placed in train (leaks),
   and images of an unrelated kind (generated noise, stripes, checkerboards, gradients) in train.
2. ``tlkit.run.audit_command.audit_recipe`` audits each copy on Lite0 features (through the feature
   cache: the photos' features are the originals', by content hash), and the findings are scored
   against the faults put in.
3. cleanlab runs side by side: ``cleanlab.filter.find_label_issues`` on the audit's own out-of-sample
   probabilities, and cleanlab's ``CleanLearning`` (scikit-learn logistic regression, its 5-fold
   cross-validation) on the same features.
4. Time of the audit on the cached ants/bees features (Must hold 3: under 5 s), and time and peak
   memory (``VmHWM`` of a child process that does nothing else) of the audit of 20k generated images'
   features (Must hold 3: under 2 GB).

Example (the figures in benchmarks/README.md)::

    python benchmarks/audit.py
    python benchmarks/audit.py --skip-scale       # the fault injection only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_line  # type: ignore[import-not-found]  # benchmarks/machine.py
from PIL import Image

from tlkit.audit.findings import AuditInputs, SplitData
from tlkit.audit.label_issues import label_issue_mask
from tlkit.audit.probabilities import out_of_sample_probabilities
from tlkit.audit.runner import audit
from tlkit.contract.plugin_manager import get_plugins
from tlkit.recipe.loader import resolve
from tlkit.run.audit_command import audit_recipe

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
SEED = 0




def link_copy(source: Path, target: Path) -> None:
    """``target`` mirrors ``source``'s folders with a symbolic link per file (no photo is copied)."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path.resolve())


def unrelated_image(kind: int, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """An image of nothing an ants/bees photo looks like: noise, stripes, a checkerboard or a gradient."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    colour = rng.integers(0, 256, 3)
    if kind == 0:
        pixels = rng.integers(0, 256, (size, size, 3))
    elif kind == 1:
        stripes = (np.sin(xx * rng.uniform(10, 60) + yy * rng.uniform(0, 20)) > 0)[..., None]
        pixels = np.where(stripes, colour, 255 - colour)
    elif kind == 2:
        cells = int(rng.integers(4, 16))
        board = (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2)[..., None]
        pixels = np.where(board, colour, rng.integers(0, 256, 3))
    else:
        pixels = (xx[..., None] * colour + (1 - yy[..., None]) * (255 - colour)) / 2
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def inject(root: Path, flip_fraction: float, unrelated: int = 8, leaks: int = 5) -> dict[str, set[str]]:
    """Put the faults into the copy at ``root``; returns the true faulty paths per kind (relative to ``root``)."""
    rng = np.random.default_rng(SEED)
    classes = sorted(p.name for p in (root / "train").iterdir())
    train = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*") if p.is_file())
    flipped: set[str] = set()
    for i in rng.choice(len(train), int(round(flip_fraction * len(train))), replace=False):
        path = root / train[i]
        other = classes[(classes.index(path.parent.name) + 1) % len(classes)]
        (root / "train" / other / path.name).parent.mkdir(exist_ok=True)
        path.rename(root / "train" / other / path.name)
        flipped.add(f"train/{other}/{path.name}")
    outliers: set[str] = set()
    for i in range(unrelated):
        name = f"train/{classes[i % len(classes)]}/unrelated-{i}.png"
        unrelated_image(i % 4, rng).save(root / name)
        outliers.add(name)
    leaked: set[str] = set()
    test = sorted(p for p in (root / "val").rglob("*") if p.is_file())
    for i in rng.choice(len(test), leaks, replace=False):
        source = test[i]
        name = f"train/{source.parent.name}/copy-of-{source.name}"
        shutil.copyfile(source.resolve(), root / name)  # a byte copy under another name: the cache hashes content
        leaked.add(f"val/{source.parent.relative_to(root / 'val').as_posix()}/{source.name}")
    return {"label_issue": flipped, "outlier": outliers, "leak": leaked}


def recipe_for(root: Path) -> object:
    data = {
        "name": "audit-benchmark",
        "seed": SEED,
        "dataset": {"name": "imagefolder", "root": str(root), "train": "train", "test": "val"},
        "backbone": {"name": "efficientnet_lite0"},
    }
    return resolve(data, get_plugins())


def scores(flagged: set[str], truth: set[str]) -> str:
    hits = len(flagged & truth)
    precision = hits / len(flagged) if flagged else float("nan")
    recall = hits / len(truth) if truth else float("nan")
    return f"flagged {len(flagged):3d}, true {len(truth):3d}, precision {precision:.2f}, recall {recall:.2f}"


def cleanlab_rows(root: Path, report_dir: Path, truth: set[str]) -> list[str]:
    """cleanlab on the audit's out-of-sample probabilities, and cleanlab's own CleanLearning on the same features."""
    try:
        from cleanlab.classification import CleanLearning
        from cleanlab.filter import find_label_issues
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return ["cleanlab or scikit-learn is not installed: no comparison"]
    features = np.load(report_dir / "features.npz")
    x, y, paths = features["x"], features["y"], [str(p) for p in features["paths"]]
    probabilities, l2 = out_of_sample_probabilities(x, y, int(y.max()) + 1, seed=SEED)
    ours = {paths[i] for i in np.flatnonzero(label_issue_mask(probabilities, y))}
    theirs = {paths[i] for i in np.flatnonzero(find_label_issues(y, probabilities))}
    start = time.perf_counter()
    learner = CleanLearning(LogisticRegression(max_iter=2000), seed=SEED, cv_n_folds=5)
    issues = learner.find_label_issues(x, y)
    own = {paths[i] for i in np.flatnonzero(issues["is_label_issue"].to_numpy())}
    seconds = time.perf_counter() - start
    k = len(truth)  # ranking alone, at one operating point for both: precision (= recall) among the k worst-ranked
    ours_top = {paths[i] for i in np.argsort(probabilities[np.arange(len(y)), y], kind="stable")[:k]}
    theirs_top = {paths[i] for i in np.argsort(issues["label_quality"].to_numpy(), kind="stable")[:k]}
    budget = len(own)  # as many images as CleanLearning flags: who finds more wrong labels with the same budget
    ours_budget = {paths[i] for i in np.argsort(probabilities[np.arange(len(y)), y], kind="stable")[:budget]}
    return [
        f"  tlkit confident learning (same probabilities, l2 {l2:g}): {scores(ours, truth)}",
        f"  cleanlab find_label_issues on the audit's probabilities:  {scores(theirs, truth)}",
        f"  cleanlab CleanLearning(LogisticRegression) on the features: {scores(own, truth)} ({seconds:.1f} s)",
        f"  ranking only, the {k} lowest self-confidences: tlkit precision = recall {len(ours_top & truth) / k:.2f}, "
        f"CleanLearning {len(theirs_top & truth) / k:.2f}",
        f"  with CleanLearning's budget, tlkit's {budget} lowest self-confidences: {scores(ours_budget, truth)}",
    ]


def train_features(root: Path, out: Path) -> None:
    """The train split's features, labels and relative paths, for the cleanlab comparison."""
    from tlkit.run import stages

    prepared = stages.prepare(recipe_for(root))  # type: ignore[arg-type]
    extracted = stages.extract(prepared)
    samples = extracted.samples["train"]
    np.savez(
        out,
        x=extracted.features["train"].x.numpy(),
        y=extracted.features["train"].y.numpy(),
        paths=np.array([Path(s.path).relative_to(root).as_posix() for s in samples]),
    )


def fault_run(data: Path, flip_fraction: float, work: Path) -> None:
    root = work / f"hymenoptera-flip{int(flip_fraction * 100)}"
    link_copy(data, root)
    truth = inject(root, flip_fraction)
    start = time.perf_counter()
    result = audit_recipe(recipe_for(root), work / f"audit-{int(flip_fraction * 100)}")  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    found: dict[str, set[str]] = {}
    for f in result.report.findings:
        if f.kind == "leak":
            found.setdefault("leak", set()).update(p for p, s in zip(f.paths, f.splits) if s == "test")
        else:
            found.setdefault(f.kind, set()).add(f.paths[0])
    print(f"\n{flip_fraction:.0%} of training labels flipped ({len(truth['label_issue'])} images), {len(truth['outlier'])} unrelated images, "
          f"{len(truth['leak'])} test images copied into train; tlkit audit {seconds:.1f} s (features from the cache)")
    for kind in ("label_issue", "outlier", "leak"):
        print(f"  {kind:12s} {scores(found.get(kind, set()), truth[kind])}")
    train_features(root, work / "features.npz")
    for line in cleanlab_rows(root, work, truth["label_issue"]):
        print(line)
    run_duplicate_benchmark(root, work)


def run_duplicate_benchmark(copy_root: Path, work: Path) -> None:
    """The near-duplicate benchmark (``benchmarks/audit_duplicates.py``): planted copies in a fresh copy of ants/bees, and its 20k scale run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from audit_duplicates import duplicate_benchmark  # type: ignore[import-not-found]

    result = duplicate_benchmark(work / "duplicates")
    print("\nnear-duplicates (benchmarks/audit_duplicates.py):")
    print(json.dumps(result, indent=1))


def cached_audit_time(data: Path, repeat: int = 3) -> None:
    """Must hold 3: the audit alone on the cached ants/bees features (the same call ``tlkit run`` makes)."""
    from tlkit.run import stages
    from tlkit.run.audit_stage import run_inputs

    prepared = stages.prepare(recipe_for(data))  # type: ignore[arg-type]
    features = stages.extract(prepared)
    inputs = run_inputs(prepared, features)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        report = audit(inputs)
        times.append(time.perf_counter() - start)
    per = ", ".join(f"{k} {v:.2f}" for k, v in report.timings_s.items())
    print(f"\naudit of the cached ants/bees features ({sum(len(s.y) for s in inputs.splits.values())} images): "
          f"{min(times):.2f} s best of {repeat} ({', '.join(f'{t:.2f}' for t in times)}); per finder (s): {per}")


def _scale_child(n: int, dim: int, classes: int, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    rng = np.random.default_rng(SEED)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    splits = {}
    for split, count in (("train", int(n * 0.8)), ("test", n - int(n * 0.8))):
        y = rng.integers(0, classes, count)
        x = (centres[y] + rng.normal(scale=2.0, size=(count, dim))).astype(np.float32)
        paths = tuple(f"{split}/{y[i]}/{i}.jpg" for i in range(count))
        digests = tuple(f"{split}{i:064x}" for i in range(count))
        splits[split] = SplitData(x=x, y=y, paths=paths, files=(None,) * count, digests=digests)
    inputs = AuditInputs(classes=tuple(str(c) for c in range(classes)), splits=splits, seed=SEED)
    before = _vm("VmHWM")
    start = time.perf_counter()
    report = audit(inputs)
    seconds = time.perf_counter() - start
    queue.put((seconds, before, _vm("VmHWM"), {k: round(v, 2) for k, v in report.timings_s.items()}, len(report.findings)))


def _vm(key: str) -> float:
    """A ``/proc/self/status`` figure in MB (the peak resident set: VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scale_run(n: int = 20_000, dim: int = 1280, classes: int = 10) -> None:
    """Must hold 3: 20k generated images' features audited in a child process; its peak memory (VmHWM)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_scale_child, args=(n, dim, classes, queue))
    child.start()
    seconds, before, peak, timings, found = queue.get()
    child.join()
    print(f"\n{n} generated images x {dim} features, {classes} classes: audit {seconds:.1f} s, peak memory (child VmHWM) {peak:.0f} MB "
          f"({before:.0f} MB before the audit: interpreter, torch and the features); {found} findings; per finder (s): {timings}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the ants/bees folder (train/, val/)")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the 20k-image time and memory run")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory(prefix="tlkit-audit-bench-") as tmp:
        for fraction in (0.05, 0.10):
            work = Path(tmp) / f"flip{int(fraction * 100)}"
            work.mkdir()
            fault_run(args.data, fraction, work)
    cached_audit_time(args.data)
    if not args.skip_scale:
        scale_run()


if __name__ == "__main__":
    main()
