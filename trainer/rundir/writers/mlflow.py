"""``logger.writers=[..., mlflow]``: the run's scalars and hyper-parameters in an MLflow tracking
store (``pip install 'trainer[mlflow]'``: the ``mlflow-skinny`` client, no server needed).

``logger.mlflow.tracking_uri`` picks the store (null: ``$MLFLOW_TRACKING_URI``, else MLflow's
default); an offline store is a ``file:`` URI (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true``
to use one) or ``sqlite:`` (with SQLAlchemy installed). Every logged step is one ``log_batch``
call; a tag's levels below the second join with dots there (``train/lr/decay`` is
``train/lr.decay``). A resumed run logs into the same MLflow run (its id is kept in the run
directory's ``mlflow_run_id``); MLflow cannot delete points, so the few steps logged after the
checkpoint it resumed from appear twice there (``metrics.csv`` and the event files hold each once),
and a hyper-parameter the resumed run changed goes to a tag ``resumed/KEY`` (MLflow keeps a
parameter's first value). A store that fails mid-run costs the run its MLflow records, not the run:
one warning on stderr, and the other writers go on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError, one_line
from trainer.files import write_atomic
from trainer.params import Param, defaults

PARAMS: dict[str, Param] = {
    "tracking_uri": Param(None, "the MLflow store: file:/path, sqlite:///path.db, http://host:5000; null: "
                          "$MLFLOW_TRACKING_URI, else MLflow's default", str, extra=(None,)),
    "experiment": Param("trainer", "the MLflow experiment the runs go to", str),
}
RUN_ID_FILE = "mlflow_run_id"
#: Our statuses as MLflow's run statuses.
STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "preempted": "KILLED"}
KEY = "logger.mlflow.tracking_uri"


def metric_key(tag: str) -> str:
    """The MLflow key of a tag: its levels below the second joined by dots (``train/lr/decay`` ->
    ``train/lr.decay``). MLflow's file store keeps ``train/lr`` as a file, so it cannot also be the
    folder of ``train/lr/decay``."""
    first, _, rest = tag.partition("/")
    return f"{first}/{rest.replace('/', '.')}" if rest else first


def settings_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """``logger.mlflow.*`` with every key it leaves out at its default."""
    return {**defaults(PARAMS), **(config.get("logger", {}).get("mlflow") or {})}


class Writer:
    def __init__(self, run_dir: Path, *, purge_step: int, config: Mapping[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        settings = settings_of(config)
        self.client = MlflowClient(tracking_uri=settings["tracking_uri"])
        self.warned = False
        experiment_id = self._experiment(settings["experiment"])
        id_file = run_dir / RUN_ID_FILE
        if purge_step > 0 and id_file.is_file():  # a resumed run goes on in its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            write_atomic(id_file, self.run_id + "\n")

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another job of a parallel sweep made it first
            return self.client.get_experiment_by_name(name).experiment_id

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """The client imports, and MLflow will open the store: no store is touched here (this runs
        on every rank, and for a config that may fail a later check)."""
        try:
            import mlflow
        except ImportError:
            raise ConfigError("logger.writers", "mlflow needs the MLflow client: pip install 'trainer[mlflow]'") from None
        uri = settings_of(OmegaConf.to_container(cfg, resolve=True))["tracking_uri"] or mlflow.get_tracking_uri()
        scheme = urlparse(uri).scheme
        gate = getattr(mlflow.environment_variables, "MLFLOW_ALLOW_FILE_STORE", None)
        if scheme in ("", "file") and gate is not None and not gate.get():
            raise ConfigError(KEY, f"MLflow refuses its file store {uri} unless MLFLOW_ALLOW_FILE_STORE=true is set: "
                                   "set it, or use sqlite:///path.db or a tracking server")
        if scheme == "sqlite":
            try:
                import sqlalchemy  # noqa: F401
            except ImportError:
                raise ConfigError(KEY, f"{uri} needs SQLAlchemy: pip install sqlalchemy alembic") from None

    def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        """MLflow's call, or one warning (the first failure) and the run goes on without it."""
        try:
            call()
        except Exception as error:
            if not self.warned:
                print(f"warning: logger.writers: mlflow could not {what} ({one_line(error)}); the run goes on, "
                      "its other writers keep every value", file=sys.stderr)
                self.warned = True

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(tag), float(value), now, step) for tag, value in values.items()]
        self._guarded("log scalars", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None:
        from mlflow.entities import Param as MlflowParam
        from mlflow.entities import RunTag

        def log() -> None:
            logged = self.client.get_run(self.run_id).data.params
            values = {key: str(value) for key, value in hparams.items()}
            new = [MlflowParam(key, value) for key, value in values.items() if key not in logged]
            changed = [RunTag(f"resumed/{key}", value) for key, value in values.items()
                       if key in logged and logged[key] != value]
            self.client.log_batch(self.run_id, params=new, tags=changed)

        self._guarded("log the hyper-parameters", log)

    def flush(self) -> None:
        """Nothing: every call above has reached the store when it returns."""

    def close(self, status: str) -> None:
        self._guarded("end its run", lambda: self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED")))
