"""Run observers (hook ``register_observers``, recipe section ``observers:``): the events a run hands
them, in order; a failing observer costs one warning and never the run; the recipe section is checked
like any other; and the docs' example observer runs as written."""

from __future__ import annotations

import json
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_docs import code_blocks, subsections
from tiny import TinyPlugin

import tlkit
from tlkit.contract.plugin_manager import Plugins, load_plugins, set_plugins
from tlkit.errors import RecipeError, RunInterrupted
from tlkit.recipe.loader import resolve
from tlkit.run.engine import run
from tlkit.run.observing import ObserverWarning


@dataclass(frozen=True)
class RecordOptions:
    fail_at: str = field(default="", metadata={"help": "the event that raises ('' for none)"})
    exit: bool = field(default=False, metadata={"help": "raise SystemExit instead of RuntimeError"})


EVENTS: list[tuple[str, Any]] = []


class Recorder(tlkit.Observer):
    def __init__(self, options: RecordOptions) -> None:
        self.fail_at = options.fail_at
        self.exit = options.exit

    def _seen(self, event: str, data: Any = None) -> None:
        if event == self.fail_at:
            if self.exit:
                raise SystemExit(3)
            raise RuntimeError(f"broken at {event}")
        EVENTS.append((event, data))

    def start(self, name: str, params: Mapping[str, Any]) -> None:
        self._seen("start", (name, dict(params)))

    def stage(self, text: str) -> None:
        self._seen("stage", text)

    def point(self, label: str, values: Mapping[str, float]) -> None:
        self._seen("point", dict(values))

    def metrics(self, values: Mapping[str, float]) -> None:
        self._seen("metrics", dict(values))

    def artifacts(self, run_dir: Path) -> None:
        self._seen("artifacts", run_dir)

    def end(self, status: str) -> None:
        self._seen("end", status)

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Callable[[int], None]]:
        self._seen("task", description)
        yield lambda n: self._seen("advance", n)


class RecordPlugin:
    __name__ = "tests-recorder"

    @tlkit.hookimpl
    def register_observers(self, register: Any) -> None:
        register(tlkit.ObserverSpec(name="recorder", build=Recorder, description="records events", options=RecordOptions))


@pytest.fixture(scope="module")
def loaded_once() -> Plugins:
    return load_plugins(entry_points=False, extra=[TinyPlugin(), RecordPlugin()])  # loading the built-ins is the slow part


@pytest.fixture
def observing_plugins(loaded_once: Plugins) -> Iterator[Plugins]:
    set_plugins(loaded_once)
    EVENTS.clear()
    try:
        yield loaded_once
    finally:
        set_plugins(None)


def _recipe(plugins: Plugins, root: Path, **observers: Any) -> Any:
    return resolve(
        {
            "name": "observed",
            "dataset": {"root": str(root)},
            "backbone": {"name": "tiny_cnn"},
            "extract": {"workers": 0, "batch_size": 4, "cache": False},
            "head": {"name": "linear", "epochs": 6, "lr": 0.1, "eval_every": 2},
            "observers": observers,
        },
        plugins,
    )


def test_an_observer_sees_start_epochs_metrics_artifacts_and_end_in_order(observing_plugins: Plugins, image_folder: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ObserverWarning)
        result = run(_recipe(observing_plugins, image_folder, recorder={}), tmp_path / "out")
    kinds = [event for event, _ in EVENTS]
    assert kinds[0] == "start" and kinds[-3:] == ["metrics", "artifacts", "end"]
    name, params = EVENTS[0][1]
    assert name == "observed"
    assert (params["head.name"], params["head.epochs"], params["backbone.name"], params["dataset.root"]) == ("linear", 6, "tiny_cnn", str(image_folder))
    assert not any(key.startswith("observers") for key in params)
    assert all(value is None or isinstance(value, (str, int, float, bool)) for value in params.values())
    assert "stage" in kinds and "task" in kinds and "advance" in kinds
    epochs = [data["epoch"] for event, data in EVENTS if event == "point"]
    assert epochs == [2.0, 4.0, 6.0]
    metrics = EVENTS[-3][1]
    saved = json.loads((result.out_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] == saved["test_accuracy"] and metrics["train_accuracy"] == saved["train_accuracy"]
    assert metrics["test_images"] == saved["counts"]["test"] and metrics["time_total_s"] > 0
    assert EVENTS[-2][1] == result.out_dir and (result.out_dir / "run.json").is_file()
    assert EVENTS[-1][1] == "ok"


@pytest.fixture(scope="module")
def plain_accuracy(tmp_path_factory: pytest.TempPathFactory, loaded_once: Plugins) -> float:
    """The test accuracy of the recipe run without observers (the figure each observed run must match)."""
    from conftest import make_image_folder

    root = tmp_path_factory.mktemp("plain")
    result = run(_recipe(loaded_once, make_image_folder(root / "data")), root / "out")
    return float(json.loads((result.out_dir / "metrics.json").read_text())["test_accuracy"])


@pytest.mark.parametrize("event", ["start", "stage", "task", "advance", "point", "metrics", "artifacts"])
def test_an_observer_that_raises_costs_one_warning_and_never_the_run(
    observing_plugins: Plugins, image_folder: Path, tmp_path: Path, event: str, plain_accuracy: float
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(_recipe(observing_plugins, image_folder, recorder={"fail_at": event}), tmp_path / "observed")
    said = [str(w.message) for w in caught if issubclass(w.category, ObserverWarning)]
    assert len(said) == 1 and said[0].startswith(f"observer 'recorder' failed at {event if event != 'advance' else 'task'} (RuntimeError: broken at {event})")
    assert "end" not in [e for e, _ in EVENTS]  # left out of the rest of the run
    assert json.loads((result.out_dir / "metrics.json").read_text())["test_accuracy"] == plain_accuracy
    assert (result.out_dir / "run.json").is_file()


def test_an_observer_calling_sys_exit_does_not_end_the_run(observing_plugins: Plugins, image_folder: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(_recipe(observing_plugins, image_folder, recorder={"fail_at": "point", "exit": True}), tmp_path / "out")
    said = [str(w.message) for w in caught if issubclass(w.category, ObserverWarning)]
    assert said == ["observer 'recorder' failed at point (SystemExit: 3); the run goes on without it"]
    assert (result.out_dir / "run.json").is_file()


def test_end_says_failed_or_interrupted(observing_plugins: Plugins, image_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("not tlkit's")
    with pytest.raises(tlkit.TlkitError):
        run(_recipe(observing_plugins, image_folder, recorder={}), tmp_path / "taken")
    assert EVENTS == []  # a refused --out is no run: nothing to track
    (tmp_path / "empty").mkdir()
    with pytest.raises(tlkit.TlkitError):
        run(_recipe(observing_plugins, tmp_path / "empty", recorder={}), tmp_path / "out")
    assert EVENTS[0][0] == "start" and EVENTS[-1] == ("end", "failed") and not (tmp_path / "out").exists()

    class CtrlC(tlkit.Observer):
        def stage(self, text: str) -> None:
            if text.startswith("training"):
                raise KeyboardInterrupt

    EVENTS.clear()
    with pytest.raises(RunInterrupted):
        run(_recipe(observing_plugins, image_folder, recorder={}), tmp_path / "stopped", CtrlC())
    assert EVENTS[-1] == ("end", "interrupted") and not (tmp_path / "stopped").exists()


@pytest.mark.parametrize(
    ("observers", "message"),
    [
        ({"recordr": {}}, "'observers': unknown observer 'recordr'; did you mean 'recorder'?"),
        ({"recorder": {"fail_a": "x"}}, "unknown key 'observers.recorder.fail_a'; did you mean 'fail_at'?"),
        ({"recorder": "yes"}, "'observers.recorder' must be a mapping of options"),
        ({"mlflow": {"tracking_uri": ""}}, "'observers.mlflow.tracking_uri'"),
    ],
)
def test_the_observers_section_is_checked_when_the_recipe_is_read(observing_plugins: Plugins, image_folder: Path, observers: Any, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        _recipe(observing_plugins, image_folder, **observers)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_hostile_observers_sections_are_refused_in_one_line(observing_plugins: Plugins, image_folder: Path) -> None:
    recipe = {"dataset": {"root": str(image_folder)}, "backbone": {"name": "tiny_cnn"}}
    for observers, message in (
        (["mlflow"], "'observers' must be a mapping"),
        ({f"o{i}": {} for i in range(1000)}, "at most 16"),
        ({"recorder": {"fail_at": ["x"] * 5}}, "'observers.recorder.fail_at'"),
    ):
        with pytest.raises(RecipeError) as caught:
            resolve({**recipe, "observers": observers}, observing_plugins)
        assert message in str(caught.value) and len(str(caught.value)) < 300


def test_the_docs_example_observer_logs_a_run(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/plugins.md '### register_observers', exec'd as written, registered as a plugin and turned on by a recipe."""
    module = types.ModuleType("docs_jsonlog")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(code_blocks(subsections()["register_observers"], "python")[0], "docs/plugins.md", "exec", dont_inherit=True), module.__dict__)
    loaded = load_plugins(entry_points=False, extra=[TinyPlugin(), module])
    assert loaded.status["docs_jsonlog"].registered == {"observers": ["jsonlog"]}
    log = tmp_path / "events.jsonl"
    result = run(_recipe(loaded, image_folder, jsonlog={"path": str(log)}), tmp_path / "out")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "epoch", "metrics", "artifacts", "end"]
    assert events[0]["params"]["head.lr"] == 0.1 and events[-2]["run_dir"] == str(result.out_dir) and events[-1]["status"] == "ok"
