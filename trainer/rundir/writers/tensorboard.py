"""``logger.writers=[tensorboard]`` (the default): event files in the run directory, and
TensorBoard's HParams tab (:mod:`trainer.rundir.hparams`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.rundir.events import EventWriter, read_scalars
from trainer.rundir.hparams import experiment_summary, hparam_infos, session_summaries, write_sweep_experiment


class Writer:
    """Scalars into ``events.out.tfevents.*`` files, one record per logged step."""

    def __init__(self, run_dir: Path, *, purge_step: int, config: Mapping[str, Any]) -> None:
        # On resume, purge_step makes TensorBoard drop what the interrupted run logged after its
        # checkpoint, so the updates it replays are not shown twice; a fresh run (update 0) hides
        # whatever an earlier run left in the same directory.
        self.events = EventWriter(run_dir, purge_step=purge_step)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.events.scalars(step, values)

    def hparams(self, hparams: Mapping[str, Any], *, experiment: bool) -> None:
        """This run's session (its hyper-parameters, beside its last ``val/*`` scalars in this same
        run) and, with ``experiment``, the table's columns too (a sweep writes those once for all
        its jobs, :meth:`sweep_end`)."""
        summaries = session_summaries(dict(hparams))
        if experiment:
            summaries.insert(0, experiment_summary(hparam_infos([dict(hparams)])))
        for summary in summaries:
            self.events.summary(summary)

    def flush(self) -> None:
        self.events.flush()

    def close(self, status: str) -> None:
        self.events.close()

    @staticmethod
    def hint(run_dir: Path) -> str:
        """How to look at what it wrote."""
        return f"tensorboard --logdir {run_dir}"

    @staticmethod
    def read(run_dir: Path) -> dict[str, list[tuple[int, float]]] | None:
        return read_scalars(run_dir) if any(run_dir.glob("events.out.tfevents.*")) else None

    @staticmethod
    def sweep_end(sweep_dir: Path) -> None:
        """The HParams table's columns, once for every job of the sweep (in its first job's directory)."""
        write_sweep_experiment(sweep_dir)
