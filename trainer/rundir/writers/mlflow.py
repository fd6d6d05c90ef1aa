"""``logger.writers=[..., mlflow]``: the run's scalars and hyper-parameters in an MLflow tracking
store (``pip install 'trainer[mlflow]'``: the ``mlflow-skinny`` client, no server needed).

``logger.mlflow.tracking_uri`` picks the store (null: ``$MLFLOW_TRACKING_URI``, else MLflow's
default); an offline store is a ``file:`` URI (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true``
to use one) or ``sqlite:``. Every logged step is one ``log_batch`` call; a tag's levels below
the second join with dots there (``train/lr/decay`` is ``train/lr.decay``). A resumed run logs into
the same MLflow run (its id is kept in the run directory's ``mlflow_run_id``); MLflow cannot
delete points, so the few steps logged after the checkpoint it resumed from appear twice there
(``metrics.csv`` and the event files hold each once).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.errors import ConfigError, one_line
from trainer.params import Param

PARAMS: dict[str, Param] = {
    "tracking_uri": Param(None, "the MLflow store: file:/path, sqlite:///path.db, http://host:5000; null: "
                          "$MLFLOW_TRACKING_URI, else MLflow's default", str, extra=(None,)),
    "experiment": Param("trainer", "the MLflow experiment the runs go to", str),
}
RUN_ID_FILE = "mlflow_run_id"
#: Our statuses as MLflow's run statuses.
STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "preempted": "KILLED"}


def _client(uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("logger.writers", "mlflow needs the MLflow client: pip install 'trainer[mlflow]'") from None
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as error:  # MLflow's refusal of the store, e.g. a file store without its opt-in
        raise ConfigError("logger.mlflow.tracking_uri", one_line(error)) from None


def metric_key(tag: str) -> str:
    """The MLflow key of a tag: its levels below the second joined by dots (``train/lr/decay`` ->
    ``train/lr.decay``). MLflow's file store keeps ``train/lr`` as a file, so it cannot also be the
    folder of ``train/lr/decay``."""
    first, _, rest = tag.partition("/")
    return f"{first}/{rest.replace('/', '.')}" if rest else first


class Writer:
    def __init__(self, run_dir: Path, *, purge_step: int, config: Mapping[str, Any]) -> None:
        settings = config["logger"]["mlflow"]
        self.client = _client(settings["tracking_uri"])
        experiment = self.client.get_experiment_by_name(settings["experiment"])
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings["experiment"])
        id_file = run_dir / RUN_ID_FILE
        if purge_step > 0 and id_file.is_file():  # a resumed run goes on in its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            id_file.write_text(self.run_id + "\n")

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """The client imports and the store opens (MLflow refuses some stores outright)."""
        _client(cfg.logger.mlflow.tracking_uri)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(tag), float(value), now, step) for tag, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None:
        from mlflow.entities import Param as MlflowParam

        self.client.log_batch(self.run_id, params=[MlflowParam(key, str(value)) for key, value in hparams.items()])

    def flush(self) -> None:
        """Nothing: every call above has reached the store when it returns."""

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
