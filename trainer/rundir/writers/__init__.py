"""Log writers: where the logged scalars go (``logger.writers``, default ``[tensorboard]``).

A writer is a class built as ``Writer(run_dir, purge_step=U, config=CONFIG)`` on rank 0 with

- ``scalars(step, values)``: every ``tag: value`` logged at ``step`` (``train/*`` at the 0-based
  update they belong to, ``val/*`` at the updates done when measured);
- ``hparams(hparams, experiment=...)``: the run's hyper-parameters once it has completed (with
  ``experiment``, also the columns of a single run's table);
- ``flush()``: everything so far durable on disk; called before every checkpoint, so what a
  resumed run does not replay is never lost;
- ``close(status)``: the run ended with ``status`` (:data:`trainer.errors.STATUSES`).

``purge_step``: a resumed run continues from that update; whatever the writer holds at or after
it (logged after the checkpoint, before the run was killed) must not show twice. Optional:
``read(run_dir)`` (a staticmethod) gives back every scalar as ``{tag: [(step, value), ...]}``, or
None when the run directory holds none of its files (the end-of-run summary and sweep reports
read through it); ``sweep_end(sweep_dir)`` runs once after a ``-m`` sweep; ``check(cfg)`` refuses
a config it cannot write for, before anything runs.

``logger.writers`` names this package's modules (each holds a ``Writer``: ``tensorboard``,
``csv``, ``mlflow``) or a user's class by its dotted path (``mypackage.logs.WandbWriter``). A new
writer is a module here and its test; one with settings declares them as ``PARAMS``, read from
``logger.NAME.*``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from trainer.components import locate
from trainer.errors import ConfigError
from trainer.params import Param

#: ``logger.*`` (conf/logger/tensorboard.yaml): read by :class:`trainer.rundir.logger.RunLogger`.
LOGGER: dict[str, Param] = {
    "writers": Param(["tensorboard"], "where logged scalars go: tensorboard, csv, mlflow, or a writer class's "
                     "dotted path", list, item=str, min_items=1),
    "log_every_n_steps": Param(10, "write train/* scalars every N optimizer updates", int, low=1),
    "read_every_n_steps": Param(50, "read logged device values (one host-device sync) every N updates", int, low=1),
    "progress_bar": Param(True, "tqdm bar with loss and LR on the console", bool),
}

Scalars = dict[str, list[tuple[int, float]]]


class Writer(Protocol):
    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None: ...

    def flush(self) -> None: ...

    def close(self, status: str) -> None: ...


def shipped() -> list[str]:
    """The writers this package ships, by the name ``logger.writers`` takes."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__))


def writer_class(name: str, key: str = "logger.writers") -> type:
    """The class ``logger.writers`` names: a shipped module's ``Writer``, or a dotted path."""
    if "." in name:
        try:
            return locate(name, key)
        except ConfigError as error:  # located as a _target_ would be: say which list item
            raise ConfigError(key, str(error).split(": ", 1)[1]) from None
    if name not in shipped():
        raise ConfigError(key, f"unknown writer {name!r}; known: {', '.join(shipped())}, or a writer class's dotted path")
    return importlib.import_module(f"{__name__}.{name}").Writer


def writer_nodes() -> dict[str, dict[str, Param]]:
    """``logger.NAME.*``: the settings of the shipped writers that have some (``PARAMS`` in their module)."""
    modules = {name: importlib.import_module(f"{__name__}.{name}") for name in shipped()}
    return {name: module.PARAMS for name, module in modules.items() if hasattr(module, "PARAMS")}


def check_writers(names: Sequence[str], cfg: Any = None) -> None:
    """Each named writer exists (and can write for ``cfg``, where it checks); none is named twice."""
    for index, name in enumerate(names):
        if name in list(names)[:index]:
            raise ConfigError(f"logger.writers.{index}", f"{name} is named twice")
        cls = writer_class(name, f"logger.writers.{index}")
        if cfg is not None and hasattr(cls, "check"):
            cls.check(cfg)


def open_writers(names: Sequence[str], run_dir: Path, *, purge_step: int, config: Mapping[str, Any]) -> list[Writer]:
    """The run's writers, opened in ``run_dir`` (each closed again if a later one fails to open)."""
    writers: list[Writer] = []
    try:
        for name in names:
            writers.append(writer_class(name)(run_dir, purge_step=purge_step, config=config))
    except BaseException:
        for writer in writers:
            writer.close("failed")
        raise
    return writers


def optional_hook(name: str, hook: str) -> Any:
    """A writer's optional hook (``read``, ``hint``, ``sweep_end``), or None when it has none or
    its class no longer imports (a report must not fail for one job's writer)."""
    try:
        return getattr(writer_class(name), hook, None)
    except ConfigError:
        return None


def read_scalars(run_dir: Path, names: Sequence[str]) -> Scalars | None:
    """Every scalar the run logged, from the first of ``names`` whose writer can read its own files
    back and found them; None when none could."""
    for name in names:
        reader = optional_hook(name, "read")
        found = reader(run_dir) if reader is not None else None
        if found is not None:
            return found
    return None


def writers_of(run_dir: Path) -> list[str]:
    """The writers a run directory's ``config.yaml`` names (``[tensorboard]`` without one)."""
    from omegaconf import OmegaConf

    config = run_dir / "config.yaml"
    names = OmegaConf.select(OmegaConf.load(config), "logger.writers") if config.is_file() else None
    return list(names) if names else ["tensorboard"]
