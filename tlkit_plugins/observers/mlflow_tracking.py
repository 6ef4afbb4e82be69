"""``mlflow``: log a run to MLflow: the recipe as params, each epoch's figures, the final metrics, the run directory.

Turned on by a recipe (``observers: {mlflow: {tracking_uri: file:///tmp/mlruns, experiment: ants}}``);
MLflow itself is an optional extra (``pip install 'tlkit[mlflow]'``, which installs ``mlflow-skinny``) and
is imported only when a recipe turns it on, so tlkit starts no slower for anyone else.

Everything goes through an explicit ``MlflowClient`` on the given tracking URI, never MLflow's global
"active run", so a notebook's own MLflow run is left alone. MLflow 3 refuses file stores unless
``MLFLOW_ALLOW_FILE_STORE=true``; for a ``file:`` URI (or a plain folder) the plugin sets it (when unset)
because a local folder is what the option asks for. For a server it bounds MLflow's retries
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``, when unset), so a server that is
down costs seconds, not minutes; the run then goes on with one warning and nothing logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from annotated_types import MaxLen, MinLen

import tlkit

EXTRA = "pip install 'tlkit[mlflow]' (from a checkout: pip install -e '.[mlflow]'; or pip install mlflow-skinny)"
_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch
_PARAM_CHARS = 6000  # MLflow's longest param value


@dataclass(frozen=True)
class MLflowOptions:
    tracking_uri: Annotated[str, MinLen(1), MaxLen(2000)] | None = field(
        default=None, metadata={"help": "where runs go: file:///abs/folder, a folder, http(s)://server, sqlite:///file.db (null: MLFLOW_TRACKING_URI, else MLflow's default)"}
    )
    experiment: Annotated[str, MinLen(1), MaxLen(500)] = field(default="tlkit", metadata={"help": "MLflow experiment (created if it does not exist)"})
    run_name: Annotated[str, MinLen(1), MaxLen(250)] | None = field(default=None, metadata={"help": "the MLflow run's name (null: the recipe's name)"})
    artifacts: bool = field(default=True, metadata={"help": "copy the finished run directory into the MLflow run's artifacts"})


def _is_file_store(uri: str | None) -> bool:
    """A ``file:`` URI or a plain folder (MLflow's own default, with no URI anywhere, is ``sqlite:///mlflow.db``)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri is not None and (uri.startswith("file:") or ":" not in uri.split("/", 1)[0])


def _client(options: MLflowOptions) -> Any:
    """An ``MlflowClient`` on the option's URI; MLflow missing is one line naming the extra."""
    if _is_file_store(options.tracking_uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
    elif (options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise tlkit.RecipeError(f"'observers.mlflow' needs MLflow, which is not installed: {EXTRA}") from None
    return MlflowClient(tracking_uri=options.tracking_uri)


class MLflowObserver(tlkit.Observer):
    """One MLflow run per tlkit run: params at start, ``epoch/<name>`` per epoch (step = epoch), final metrics, artifacts."""

    def __init__(self, client: Any, options: MLflowOptions) -> None:
        self.client = client
        self.options = options
        self.run_id: str | None = None

    def start(self, name: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        found = self.client.get_experiment_by_name(self.options.experiment)
        experiment = found.experiment_id if found is not None else self.client.create_experiment(self.options.experiment)
        run = self.client.create_run(experiment, run_name=self.options.run_name or name, tags={"tlkit.recipe": name})
        self.run_id = run.info.run_id
        items = [Param(key, _param(value)) for key, value in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def point(self, label: str, values: Mapping[str, float]) -> None:
        step = int(values.get("epoch", 0))
        self._log({f"epoch/{key}": value for key, value in values.items() if key != "epoch"}, step)

    def metrics(self, values: Mapping[str, float]) -> None:
        self._log(values, 0)

    def artifacts(self, run_dir: Path) -> None:
        if self.run_id is not None and self.options.artifacts:
            self.client.log_artifacts(self.run_id, str(run_dir))

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=_STATUS.get(status, "FAILED"))

    def _log(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.run_id is None or not values:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, step) for key, value in values.items()])


def _param(value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text[:_PARAM_CHARS]


def build_mlflow(options: MLflowOptions) -> tlkit.Observer:
    """Log the run to MLflow (needs ``pip install 'tlkit[mlflow]'``)."""
    return MLflowObserver(_client(options), options)


@tlkit.hookimpl
def register_observers(register: Any) -> None:
    register(
        tlkit.ObserverSpec(
            name="mlflow",
            build=build_mlflow,
            description="log params, per-epoch and final metrics and the run directory to MLflow (pip install 'tlkit[mlflow]')",
            options=MLflowOptions,
        )
    )
